// torch-sys links libtorch but puts no rpath into our binaries, so a user would have to export
// LD_LIBRARY_PATH by hand. torch-sys declares `links = "tch"` and exports the library folder it
// used as DEP_TCH_LIBTORCH_LIB; we bake that folder into every binary and test we link, and
// record the libtorch version (from the wheel's torch/version.py) for run metadata.
fn main() {
    let mut version = "unknown".to_string();
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // Resolve links: the wheel's CUDA libraries are found through $ORIGIN-relative rpaths,
        // which only work from the real torch/lib folder.
        let dir = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or(dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        let version_py = std::path::Path::new(&dir).join("../version.py");
        if let Ok(text) = std::fs::read_to_string(version_py) {
            if let Some(line) = text.lines().find(|l| l.starts_with("__version__")) {
                version = line.split('\'').nth(1).unwrap_or("unknown").to_string();
            }
        }
    }
    println!("cargo:rustc-env=LIBTORCH_VERSION={version}");

    // The bf16 autocast shim (src/shim/autocast.cpp), compiled against the wheel's headers.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let root = std::path::Path::new(&lib).join("..");
        cc::Build::new()
            .cpp(true)
            .file("src/shim/autocast.cpp")
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .warnings(false)
            .compile("lejepa_shim");
    }
    println!("cargo:rerun-if-changed=src/shim/autocast.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
