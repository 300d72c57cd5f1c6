//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments), in Rust so
//! that its state can be checkpointed and restored (tch's optimizers keep theirs inside C++).

use tch::Tensor;

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

    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let (beta1, beta2) = self.betas;
        let bias_correction1 = 1.0 - beta1.powi(self.steps as i32);
        let bias_correction2 = 1.0 - beta2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (((_, p), m), v) in self.params.iter().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(m.kind());
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                let _ = m.g_mul_scalar_(beta1).g_add_(&(&grad * (1.0 - beta1)));
                let _ = v.g_mul_scalar_(beta2).g_add_(&(grad.square() * (1.0 - beta2)));
                let denom = v.sqrt() / bias_correction2.sqrt() + self.eps;
                let update = &*m / denom * (lr / bias_correction1);
                let _ = p.g_sub_(&update.to_kind(p.kind()));
            }
        });
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
