//! bf16 mixed precision on CPU and CUDA through libtorch's autocast (a small C++ shim, since tch
//! only exposes CUDA autocast): matmuls and convolutions run in bf16 while a guard is alive.

use tch::Device;

use std::ffi::c_char;

use crate::ffi::shim_status;

// Each returns null, or a malloc'd message: a C++ exception the shim caught (src/shim/autocast.cpp).
unsafe extern "C" {
    fn lejepa_autocast_enter(cuda: i32) -> *mut c_char;
    fn lejepa_autocast_exit(cuda: i32) -> *mut c_char;
    fn lejepa_autocast_set_enabled(cuda: i32, enabled: bool, was_enabled: *mut bool) -> *mut c_char;
}

/// Autocast to bf16 on `device` until dropped.
pub struct Bf16Autocast {
    cuda: i32,
}

impl Bf16Autocast {
    pub fn new(device: Device) -> anyhow::Result<Bf16Autocast> {
        let cuda = matches!(device, Device::Cuda(_)) as i32;
        // SAFETY: the shim only flips libtorch's thread-local autocast state.
        shim_status(unsafe { lejepa_autocast_enter(cuda) }).map_err(|e| anyhow::anyhow!("bf16 autocast could not start: {e}"))?;
        Ok(Bf16Autocast { cuda })
    }
}

impl Drop for Bf16Autocast {
    fn drop(&mut self) {
        // SAFETY: as above; pairs with the enter in `new`. A drop cannot return the error: it is told.
        if let Err(e) = shim_status(unsafe { lejepa_autocast_exit(self.cuda) }) {
            eprintln!("warning: leaving bf16 autocast failed: {e}");
        }
    }
}

/// Runs `f` with CPU autocast off, then restores it: for the operators whose bf16 kernels are
/// slower than their f32 ones on the CPU (attention; the timings are in BENCHMARKS.md).
pub fn without_cpu_autocast<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the shim only flips libtorch's thread-local autocast state; restored below. It has
    // nothing to fail on; a failure would be a libtorch bug, reported with its message.
    let set = |enabled: bool| {
        let mut was_enabled = false;
        shim_status(unsafe { lejepa_autocast_set_enabled(0, enabled, &mut was_enabled) })
            .unwrap_or_else(|e| panic!("switching CPU autocast failed: {e}"));
        was_enabled
    };
    let was_enabled = set(false);
    let result = f();
    set(was_enabled);
    result
}

/// Whether a CPU whose /proc/cpuinfo reads `cpuinfo` has bf16 arithmetic units (AVX512-BF16 or AMX-BF16); without
/// them libtorch emulates bf16 and `--precision bf16` is slower than f32 on the CPU.
pub fn cpu_has_bf16_units(cpuinfo: &str) -> bool {
    cpuinfo.lines().filter(|line| line.starts_with("flags")).any(|line| {
        line.split_whitespace().any(|flag| flag == "avx512_bf16" || flag == "amx_bf16")
    })
}

/// The CPU's name as /proc/cpuinfo (`cpuinfo`) gives it, with its family and model number, which say the generation
/// where a VM's name is generic ("Intel(R) Xeon(R) Processor, family 6 model 207"); None without a model name.
pub fn cpu_name(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().filter_map(|line| line.split_once(':')).find(|(key, _)| key.trim() == name).map(|(_, value)| value.trim())
    };
    let model_name = field("model name")?;
    Some(format!("{model_name}, family {} model {}", field("cpu family").unwrap_or("?"), field("model").unwrap_or("?")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_name_carries_family_and_model_number() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Intel(R) Xeon(R) Processor\n";
        assert_eq!(super::cpu_name(cpuinfo).as_deref(), Some("Intel(R) Xeon(R) Processor, family 6 model 207"));
        assert_eq!(super::cpu_name("processor\t: 0\n"), None);
    }

    #[test]
    fn bf16_units_are_read_from_the_flags_line() {
        let with = "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\nmodel name\t: Xeon\n";
        let without = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\nmodel name\t: avx512_bf16 in a name\n";
        assert!(super::cpu_has_bf16_units(with));
        assert!(!super::cpu_has_bf16_units(without));
        assert!(!super::cpu_has_bf16_units(""));
    }
}
