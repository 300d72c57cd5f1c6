//! AdamW (ATen's fused kernel behind `lejepa::optim::AdamW`) against torch.optim.AdamW's
//! update written out tensor by tensor, over several steps with changing learning rates.

use lejepa::optim::AdamW;
use tch::{Kind, Tensor};

/// torch.optim.AdamW's documented update, one parameter at a time (f64 throughout).
struct Written {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: i32,
}

impl Written {
    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor], lr: f64, weight_decay: f64) {
        let (beta1, beta2, eps) = (0.9, 0.999, 1e-8);
        self.steps += 1;
        let bias1 = 1.0 - f64::powi(beta1, self.steps);
        let bias2 = 1.0 - f64::powi(beta2, self.steps);
        for ((p, g), (m, v)) in params.iter_mut().zip(grads).zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            *p = &*p * (1.0 - lr * weight_decay);
            *m = &*m * beta1 + g * (1.0 - beta1);
            *v = &*v * beta2 + g.square() * (1.0 - beta2);
            *p = &*p - (&*m / bias1) / ((&*v / bias2).sqrt() + eps) * lr;
        }
    }
}

fn max_relative_difference(a: &Tensor, b: &Tensor) -> f64 {
    ((a - b).abs() / b.abs().clamp_min(1e-12)).max().double_value(&[])
}

fn run(kind: Kind, tolerance: f64) {
    tch::manual_seed(7);
    let shapes: [&[i64]; 3] = [&[5, 3], &[7], &[2, 2, 4]];
    let params: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (kind, tch::Device::Cpu)).set_requires_grad(true)).collect();
    let frozen = Tensor::randn([4], (kind, tch::Device::Cpu)).set_requires_grad(true); // never gets a gradient
    let frozen_before = frozen.copy();
    let named = params.iter().chain([&frozen]).enumerate().map(|(i, p)| (format!("p{i}"), p.shallow_clone())).collect();
    let mut fused = AdamW::new(named, 0.05);
    let mut expected: Vec<Tensor> = params.iter().map(|p| p.detach().to_kind(Kind::Double)).collect();
    let mut written = Written {
        m: expected.iter().map(Tensor::zeros_like).collect(),
        v: expected.iter().map(Tensor::zeros_like).collect(),
        steps: 0,
    };
    for (step, lr) in [1e-2, 3e-3, 5e-2, 1e-3, 2e-2].into_iter().enumerate() {
        fused.zero_grad();
        assert!(params.iter().all(|p| !p.grad().defined()), "zero_grad drops the gradients (set_to_none)");
        // A loss whose gradient differs from step to step and from element to element.
        let loss: Tensor = params.iter().map(|p| (p * (step as f64 + 1.0)).sin().sum(kind) + p.square().sum(kind) * 0.3).sum();
        loss.backward();
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad().to_kind(Kind::Double)).collect();
        written.step(&mut expected, &grads, lr, 0.05);
        fused.step(lr);
        for (p, e) in params.iter().zip(&expected) {
            let difference = max_relative_difference(&p.detach().to_kind(Kind::Double), e);
            assert!(difference < tolerance, "{kind:?} step {}: fused AdamW differs from the written-out update by {difference:e}", step + 1);
        }
    }
    assert!(frozen.equal(&frozen_before), "a parameter without a gradient must not move (no decay either)");
    assert_eq!(fused.steps, 5);
}

#[test]
fn fused_adamw_is_torch_adamw_in_f64() {
    run(Kind::Double, 1e-12);
}

#[test]
fn fused_adamw_is_torch_adamw_in_f32() {
    run(Kind::Float, 1e-5);
}
