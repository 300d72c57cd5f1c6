//! bf16 mixed precision on CPU and CUDA through libtorch's autocast (a small C++ shim, since tch
//! only exposes CUDA autocast): matmuls and convolutions run in bf16 while a guard is alive.

use tch::Device;

unsafe extern "C" {
    fn lejepa_autocast_enter(cuda: i32);
    fn lejepa_autocast_exit(cuda: i32);
    fn lejepa_autocast_set_enabled(cuda: i32, enabled: bool) -> bool;
}

/// Autocast to bf16 on `device` until dropped.
pub struct Bf16Autocast {
    cuda: i32,
}

impl Bf16Autocast {
    pub fn new(device: Device) -> Bf16Autocast {
        let cuda = matches!(device, Device::Cuda(_)) as i32;
        // SAFETY: the shim only flips libtorch's thread-local autocast state.
        unsafe { lejepa_autocast_enter(cuda) };
        Bf16Autocast { cuda }
    }
}

impl Drop for Bf16Autocast {
    fn drop(&mut self) {
        // SAFETY: as above; pairs with the enter in `new`.
        unsafe { lejepa_autocast_exit(self.cuda) };
    }
}

/// Runs `f` with CPU autocast off, then restores it: for the operators whose bf16 kernels are
/// slower than their f32 ones on the CPU (attention: BENCHMARKS.md, change 14).
pub fn without_cpu_autocast<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: the shim only flips libtorch's thread-local autocast state; restored below.
    let was_enabled = unsafe { lejepa_autocast_set_enabled(0, false) };
    let result = f();
    unsafe { lejepa_autocast_set_enabled(0, was_enabled) };
    result
}
