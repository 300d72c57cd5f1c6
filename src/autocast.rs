//! bf16 mixed precision on CPU and CUDA through libtorch's autocast (a small C++ shim, since tch
//! only exposes CUDA autocast): matmuls and convolutions run in bf16 while a guard is alive.

use tch::Device;

unsafe extern "C" {
    fn lejepa_autocast_enter(cuda: i32);
    fn lejepa_autocast_exit(cuda: i32);
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
