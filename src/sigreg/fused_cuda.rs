//! The fused Epps–Pulley statistic on CUDA: the math of [`super::fused`], as GPU kernels
//! (`epps_pulley.cu`, compiled at run time by src/shim/sigreg_cuda.cpp).
//!
//!   1. `ecf_sums`, one pass over x: per slice Σ_n cos(t_k x_n), Σ_n sin(t_k x_n), `[B, M, 2·knots]`
//!      (summed over the processes here when the batch is sharded);
//!   2. `ecf_statistic`, per slice: EP = N Σ_k w_k [(c̄_k − φ_k)² + s̄_k²] and the gradient's
//!      coefficients a_k = 2 w_k t_k s̄_k, b_k = 2 w_k t_k (c̄_k − φ_k);
//!   3. `ecf_gradient`, in the backward pass, one pass over x: ∂EP/∂x_n = Σ_k a_k cos(t_k x_n) − b_k sin(t_k x_n).
//!
//! Memory is that of x (kept for the backward) and its gradient: nothing grows with the knots.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use tch::{Kind, Tensor};

use super::EppsPulley;

/// x: `[*, N, M]` on a CUDA device → `[*, M]`, differentiable.
pub fn epps_pulley(ep: &EppsPulley, x: &Tensor) -> Result<Tensor> {
    epps_pulley_sharded(ep, x, 1, &|_| Ok(()))
}

/// The same for one shard of a batch split over `processes`, as [`super::fused::epps_pulley_sharded`]:
/// `reduce` sums the per-slice sums over the processes in place, and this shard's gradient is
/// scaled by `processes` because the processes' gradients are averaged afterwards.
pub fn epps_pulley_sharded(ep: &EppsPulley, x: &Tensor, processes: usize, reduce: &dyn Fn(&Tensor) -> Result<()>) -> Result<Tensor> {
    let size = x.size();
    let (n, m) = (size[size.len() - 2], size[size.len() - 1]);
    let mut stat_shape = size[..size.len() - 2].to_vec();
    stat_shape.push(m);
    // The kernels run in f32 or f64; bf16 and f16 inputs (autocast) are computed in f32.
    let kind = if x.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let flat = x.to_kind(kind).reshape([-1, n, m]).contiguous(); // [B, N, M]
    let dt = ep.knot_spacing();
    let knots = ep.knots as i64;
    let sums = kernel::ecf_sums(&flat.detach(), dt, knots)?; // [B, M, 2·knots]
    if processes > 1 {
        reduce(&sums)?;
    }
    let n_total = (n as usize * processes) as f64;
    let statistic = kernel::statistic(&flat, &sums, n_total, dt, knots, processes as f64)?; // [B, M]
    Ok(statistic.reshape(stat_shape.as_slice()).to_kind(x.kind()))
}

/// Whether the kernels can run for x (a CUDA tensor; they are compiled for its device on the first
/// call). When they cannot (no NVRTC library, no driver), says why once and answers false from
/// then on: the caller uses the autograd version.
pub fn ready(ep: &EppsPulley, x: &Tensor) -> bool {
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
    if !x.device().is_cuda() || UNAVAILABLE.load(Ordering::Relaxed) {
        return false;
    }
    match kernel::ready(x, ep.knots as i64) {
        Ok(()) => true,
        Err(e) => {
            if !UNAVAILABLE.swap(true, Ordering::Relaxed) {
                eprintln!("warning: the fused CUDA SIGReg is unavailable, using the autograd version: {e:#}");
            }
            false
        }
    }
}

/// Compiles the kernels for a GPU of compute capability `major.minor` with NVRTC, without needing
/// one: the check the CPU machine can make. Err when NVRTC is missing or the source is wrong.
pub fn compile_check(kind: Kind, knots: usize, major: i32, minor: i32) -> Result<()> {
    kernel::compile_check(kind == Kind::Double, knots as i64, major, minor)
}

#[cfg(lejepa_cuda)]
mod kernel {
    use std::ffi::c_char;

    use anyhow::{Result, anyhow};
    use tch::Tensor;
    use torch_sys::C_tensor;

    use crate::ffi::take_string;

    unsafe extern "C" {
        // src/shim/sigreg_cuda.cpp
        fn lejepa_ep_cuda_compile_check(is_double: i32, knots: i64, major: i32, minor: i32) -> *mut c_char;
        fn lejepa_ep_cuda_ready(x: *mut C_tensor, knots: i64, error: *mut *mut c_char) -> i32;
        fn lejepa_ep_cuda_sums(x: *mut C_tensor, dt: f64, knots: i64, error: *mut *mut c_char) -> *mut C_tensor;
        fn lejepa_ep_cuda_statistic(
            x: *mut C_tensor,
            sums: *mut C_tensor,
            n_total: f64,
            dt: f64,
            knots: i64,
            scale: f64,
            error: *mut *mut c_char,
        ) -> *mut C_tensor;
    }

    fn owned(result: *mut C_tensor, error: *mut c_char) -> Result<Tensor> {
        if result.is_null() {
            return Err(anyhow!("{}", take_string(error)));
        }
        // SAFETY: a fresh at::Tensor allocated by the shim, owned from here on.
        Ok(unsafe { Tensor::from_ptr(result) })
    }

    pub fn ready(x: &Tensor, knots: i64) -> Result<()> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `x` is live for the call.
        let ok = unsafe { lejepa_ep_cuda_ready(x.as_ptr() as *mut C_tensor, knots, &mut error) };
        if ok == 1 { Ok(()) } else { Err(anyhow!("{}", take_string(error))) }
    }

    pub fn ecf_sums(x: &Tensor, dt: f64, knots: i64) -> Result<Tensor> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `x` is live for the call; the shim checks its device, shape and type.
        owned(unsafe { lejepa_ep_cuda_sums(x.as_ptr() as *mut C_tensor, dt, knots, &mut error) }, error)
    }

    pub fn statistic(x: &Tensor, sums: &Tensor, n_total: f64, dt: f64, knots: i64, scale: f64) -> Result<Tensor> {
        let mut error = std::ptr::null_mut();
        let (x, sums) = (x.as_ptr() as *mut C_tensor, sums.as_ptr() as *mut C_tensor);
        // SAFETY: the tensors are live for the call; the autograd node keeps its own references.
        owned(unsafe { lejepa_ep_cuda_statistic(x, sums, n_total, dt, knots, scale, &mut error) }, error)
    }

    pub fn compile_check(is_double: bool, knots: i64, major: i32, minor: i32) -> Result<()> {
        // SAFETY: plain values in, null or a malloc'd message out.
        let error = unsafe { lejepa_ep_cuda_compile_check(is_double as i32, knots, major, minor) };
        if error.is_null() { Ok(()) } else { Err(anyhow!("{}", take_string(error))) }
    }
}

#[cfg(not(lejepa_cuda))]
mod kernel {
    use anyhow::{Result, bail};
    use tch::Tensor;

    const MISSING: &str = "this lejepa was built without the CUDA headers: no fused Epps–Pulley kernel for CUDA";

    pub fn ready(_: &Tensor, _: i64) -> Result<()> {
        bail!(MISSING)
    }

    pub fn ecf_sums(_: &Tensor, _: f64, _: i64) -> Result<Tensor> {
        bail!(MISSING)
    }

    pub fn statistic(_: &Tensor, _: &Tensor, _: f64, _: f64, _: i64, _: f64) -> Result<Tensor> {
        bail!(MISSING)
    }

    pub fn compile_check(_: bool, _: i64, _: i32, _: i32) -> Result<()> {
        bail!(MISSING)
    }
}
