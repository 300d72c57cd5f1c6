// torch-sys links libtorch but puts no rpath into our binaries, so a user would have to export
// LD_LIBRARY_PATH by hand. torch-sys declares `links = "tch"` and exports the library folder it
// used as DEP_TCH_LIBTORCH_LIB; we bake that folder into every binary and test we link.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // Resolve links: the wheel's CUDA libraries are found through $ORIGIN-relative rpaths,
        // which only work from the real torch/lib folder.
        let dir = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or(dir);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
