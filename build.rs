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

    // The commit the binary is built from, for run metadata: a run must name the code that
    // computed it, not whatever is checked out when it runs. Re-run when HEAD moves (.git/HEAD
    // names the branch, its ref file or packed-refs the commit). Only files that exist are named:
    // cargo re-runs a build script on every build while one of its paths is missing (a repository
    // that never packed its refs has no packed-refs, and one that did may have no loose ref file),
    // which recompiled the whole crate each time. A missing branch ref is watched through its
    // folder, where the next commit creates it; packing refs deletes a watched loose ref, which
    // re-runs this script.
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    println!("cargo:rustc-env=LEJEPA_GIT_COMMIT={}", git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()));
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().map(String::from).chain(branch.clone()) {
        let Some(path) = git(&["rev-parse", "--git-path", &name]) else { continue };
        let path = std::path::PathBuf::from(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        } else if Some(&name) == branch.as_ref() {
            if let Some(folder) = path.parent().filter(|folder| folder.exists()) {
                println!("cargo:rerun-if-changed={}", folder.display());
            }
        }
    }

    // The C++ shims, compiled against the wheel's headers: bf16 autocast (src/shim/autocast.cpp),
    // AdamW's fused update (src/shim/optim.cpp), the operator profiler for `lejepa bench --profile`
    // (src/shim/profiler.cpp), host-to-GPU copies (src/shim/cuda_memory.cpp), channels-last copies
    // (src/shim/memory_format.cpp), MKL's kernel choice on
    // AMD CPUs (src/shim/mkl_dispatch.cpp) and
    // c10d (src/shim/distributed.cpp; gloo's own headers are not in the wheel, src/shim/gloo declares
    // the names torch's header mentions). NCCL, the CUDA allocator's counters and the fused CUDA
    // SIGReg (src/shim/sigreg_cuda.cpp) when the wheel is a CUDA build and the CUDA headers are
    // installed (scripts/setup does that).
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        let root = std::path::Path::new(&lib).join("..");
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("src/shim/autocast.cpp")
            .file("src/shim/distributed.cpp")
            .file("src/shim/cuda_memory.cpp")
            .file("src/shim/mkl_dispatch.cpp")
            .file("src/shim/memory_format.cpp")
            .file("src/shim/optim.cpp")
            .file("src/shim/profiler.cpp")
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .include("src/shim")
            .define("USE_C10D_GLOO", None)
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .warnings(false);
        let nvidia = root.join("../nvidia");
        let cuda = nvidia.join("cu13/include");
        if root.join("lib/libtorch_cuda.so").exists() && nvidia.join("nccl/include/nccl.h").exists() && cuda.join("crt").exists() {
            build
                .include(&cuda)
                .include(cuda.join("cccl"))
                .include(nvidia.join("nccl/include"))
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None)
                .define("LEJEPA_WITH_NCCL", None)
                .define("LEJEPA_WITH_CUDA", None);
            // The fused Epps–Pulley kernels: the shim compiles src/sigreg/epps_pulley.cu with NVRTC
            // at run time, so the source goes in as a string.
            let source = std::fs::read_to_string("src/sigreg/epps_pulley.cu").expect("src/sigreg/epps_pulley.cu");
            let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
            std::fs::write(out.join("epps_pulley_source.h"), format!("static const char EPPS_PULLEY_SOURCE[] = R\"lejepa(\n{source})lejepa\";\n")).unwrap();
            build.file("src/shim/sigreg_cuda.cpp").include(&out);
            println!("cargo:rustc-cfg=lejepa_cuda");
            println!("cargo:rustc-link-lib=dylib=c10_cuda"); // the caching allocator (cuda_memory.cpp)
        }
        build.compile("lejepa_shim");
        // MKL's vendor check, answered by src/shim/mkl_dispatch.cpp: pulled out of the shim's archive
        // although no Rust code calls it, and exported from every binary, so that libtorch's calls
        // into MKL find it before MKL's own.
        println!("cargo:rustc-link-arg=-Wl,--undefined=mkl_serv_intel_cpu_true");
        println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
        // The same file as a library to preload into the PyTorch reference (`lejepa bench --reference-mkl lejepa`),
        // to tell apart what this choice gives from the rest of a ratio.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
        let preload = out.join("libmkl_dispatch.so");
        let mut compile = cc::Build::new().cpp(true).get_compiler().to_command();
        compile.args(["-shared", "-fPIC", "-O2", "src/shim/mkl_dispatch.cpp", "-ldl", "-o"]).arg(&preload);
        let status = compile.status().expect("running the C++ compiler for src/shim/mkl_dispatch.cpp");
        assert!(status.success(), "compiling src/shim/mkl_dispatch.cpp into {}", preload.display());
        println!("cargo:rustc-env=LEJEPA_MKL_DISPATCH_PRELOAD={}", preload.display());
    }
    println!("cargo::rustc-check-cfg=cfg(lejepa_cuda)");
    println!("cargo:rerun-if-changed=src/shim");
    println!("cargo:rerun-if-changed=src/sigreg/epps_pulley.cu");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
