//! What pretraining and the linear probe both optimize with: AdamW exactly as `torch.optim.AdamW`
//! (decoupled weight decay, bias-corrected moments), in Rust so that its state can be checkpointed and
//! restored (tch's optimizers keep theirs inside C++), and the learning-rate schedule.

pub mod schedule;

use std::ffi::{c_char, c_int};

use tch::{Tensor, nn};
use torch_sys::C_tensor;

unsafe extern "C" {
    fn lejepa_fused_adamw(
        params: *mut *mut C_tensor, grads: *const *mut C_tensor, exp_avgs: *mut *mut C_tensor, exp_avg_sqs: *mut *mut C_tensor,
        count: c_int, step: f64, lr: f64, beta1: f64, beta2: f64, weight_decay: f64, eps: f64,
    ) -> *mut c_char;
    fn lejepa_clear_grad(param: *mut C_tensor) -> *mut c_char;
}

/// A store's trainable variables, sorted by name (the order every rank and every checkpoint uses).
pub fn trainable(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

pub struct AdamW {
    /// (name, parameter) pairs; names key the state in checkpoints.
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    pub steps: i64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, weight_decay: f64) -> AdamW {
        let zeros = |p: &Tensor| Tensor::zeros_like(p);
        let exp_avg = params.iter().map(|(_, p)| zeros(p)).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| zeros(p)).collect();
        AdamW { params, exp_avg, exp_avg_sq, steps: 0, betas: (0.9, 0.999), eps: 1e-8, weight_decay }
    }

    /// Drops the gradients, as torch's `zero_grad(set_to_none=True)` (the reference's and PyTorch's
    /// default): the next backward pass writes fresh gradients instead of adding into zero-filled ones.
    pub fn zero_grad(&mut self) {
        for (name, p) in &self.params {
            // SAFETY: `p` is a live tensor; the shim only resets its gradient slot (a failure would be a bug).
            crate::ffi::shim_status(unsafe { lejepa_clear_grad(p.as_ptr() as *mut C_tensor) })
                .unwrap_or_else(|e| panic!("dropping the gradient of {name} failed: {e}"));
        }
    }

    /// One update of every parameter with a gradient, as torch.optim.AdamW:
    ///   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
    ///   p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)
    /// computed by ATen's fused AdamW kernel (src/shim/optim.cpp); tests/optim.rs checks it
    /// against these formulas written out.
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let (mut params, mut grads, mut exp_avgs, mut exp_avg_sqs) = (vec![], vec![], vec![], vec![]);
        for (((_, p), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            let grad = p.grad();
            if grad.defined() {
                params.push(p.as_ptr() as *mut C_tensor);
                exp_avgs.push(m.as_ptr() as *mut C_tensor);
                exp_avg_sqs.push(v.as_ptr() as *mut C_tensor);
                grads.push(grad);
            }
        }
        let grad_ptrs: Vec<*mut C_tensor> = grads.iter().map(|g| g.as_ptr() as *mut C_tensor).collect();
        let (beta1, beta2) = self.betas;
        // SAFETY: every pointer is a live tensor borrowed for the call (the grads are held in `grads`);
        // the shim updates params and moments in place and returns null or a malloc'd message.
        unsafe {
            let error = lejepa_fused_adamw(
                params.as_mut_ptr(), grad_ptrs.as_ptr(), exp_avgs.as_mut_ptr(), exp_avg_sqs.as_mut_ptr(), params.len() as c_int,
                self.steps as f64, lr, beta1, beta2, self.weight_decay, self.eps,
            );
            if let Err(message) = crate::ffi::shim_status(error) {
                panic!("AdamW step failed (parameters, gradients and moments must share kind and device): {message}");
            }
        }
    }

    /// The moment tensors themselves (sharing storage), in parameter order.
    pub fn moments(&self) -> Vec<Tensor> {
        self.exp_avg.iter().chain(&self.exp_avg_sq).map(|t| t.shallow_clone()).collect()
    }

    /// The moments and step counter, named for a checkpoint under `prefix`.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut state = vec![(format!("{prefix}.steps"), Tensor::from(self.steps))];
        for (((name, _), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            state.push((format!("{prefix}.exp_avg.{name}"), m.shallow_clone()));
            state.push((format!("{prefix}.exp_avg_sq.{name}"), v.shallow_clone()));
        }
        state
    }

    pub fn load_state(&mut self, prefix: &str, get: &dyn Fn(&str) -> anyhow::Result<Tensor>) -> anyhow::Result<()> {
        self.steps = get(&format!("{prefix}.steps"))?.int64_value(&[]);
        tch::no_grad(|| -> anyhow::Result<()> {
            for (((name, _), m), v) in self.params.iter().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
                m.copy_(&get(&format!("{prefix}.exp_avg.{name}"))?);
                v.copy_(&get(&format!("{prefix}.exp_avg_sq.{name}"))?);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A C++ exception in the gradient-clearing shim (here: an undefined tensor) comes back as a Rust panic
    /// naming the parameter and carrying libtorch's message, not as an abort across the FFI boundary.
    #[test]
    fn a_failing_shim_is_a_rust_panic_with_its_message() {
        let mut optimizer = AdamW { params: vec![("head.weight".into(), Tensor::new())], ..AdamW::new(Vec::new(), 0.0) };
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| optimizer.zero_grad())).expect_err("must fail");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("head.weight") && message.contains("undefined tensor has no gradient"), "{message}");
    }
}
