//! The LeJEPA loss against a loop-by-loop evaluation of the paper's formula, finite differences,
//! its limits in λ, and its input checks.

use lejepa::objective::LeJepaObjective;
use lejepa::sigreg::SigReg;
use tch::{Kind, Tensor};

fn objective(lambda: f64) -> LeJepaObjective {
    LeJepaObjective::new(lambda, SigReg { slices: 16, ..SigReg::default() }).unwrap()
}

#[test]
fn invariance_is_the_mean_squared_distance_to_the_global_centre() {
    tch::manual_seed(1);
    let (v, vg, n, k) = (5usize, 2usize, 4usize, 3usize);
    let z = Tensor::randn([v as i64, n as i64, k as i64], (Kind::Double, tch::Device::Cpu));
    let at = |a: usize, b: usize, c: usize| z.double_value(&[a as i64, b as i64, c as i64]);
    // Eq. (7) with the official per-dimension mean: 1/(V N K) Σ_{v,n,k} (μ_{n,k} − z_{v,n,k})².
    let mut expected = 0.0;
    for vi in 0..v {
        for ni in 0..n {
            for ki in 0..k {
                let centre = (0..vg).map(|g| at(g, ni, ki)).sum::<f64>() / vg as f64;
                expected += (centre - at(vi, ni, ki)).powi(2);
            }
        }
    }
    expected /= (v * n * k) as f64;
    let terms = objective(0.05).forward(&z, vg, 0).unwrap();
    assert!((terms.invariance.double_value(&[]) - expected).abs() < 1e-12);
    let loss = 0.95 * expected + 0.05 * terms.sigreg.double_value(&[]);
    assert!((terms.loss.double_value(&[]) - loss).abs() < 1e-12);
}

#[test]
fn identical_views_have_zero_invariance_and_lambda_selects_the_terms() {
    tch::manual_seed(2);
    let one_view = Tensor::randn([1, 32, 8], (Kind::Double, tch::Device::Cpu));
    let z = one_view.repeat([4, 1, 1]);
    let terms = objective(0.0).forward(&z, 2, 9).unwrap();
    assert_eq!(terms.invariance.double_value(&[]), 0.0);
    assert_eq!(terms.loss.double_value(&[]), 0.0, "λ = 0 is invariance alone");
    let terms = objective(1.0).forward(&z, 2, 9).unwrap();
    assert_eq!(terms.loss.double_value(&[]), terms.sigreg.double_value(&[]), "λ = 1 is SIGReg alone");
    // SIGReg is per view and averaged over views: four copies of one view give that view's value.
    let single = SigReg { slices: 16, ..SigReg::default() }.forward(&one_view, 9).double_value(&[0]);
    assert!((terms.sigreg.double_value(&[]) - single).abs() < 1e-12);
}

#[test]
fn loss_gradient_matches_finite_differences() {
    tch::manual_seed(4);
    let z = (Tensor::randn([3, 8, 4], (Kind::Double, tch::Device::Cpu)) * 1.3).set_requires_grad(true);
    let obj = objective(0.3);
    obj.forward(&z, 2, 1).unwrap().loss.backward();
    let autograd = Vec::<f64>::try_from(z.grad().flatten(0, -1)).unwrap();
    let base = Vec::<f64>::try_from(z.detach().flatten(0, -1)).unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            obj.forward(&Tensor::from_slice(&v).view([3, 8, 4]), 2, 1).unwrap().loss.double_value(&[])
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        assert!((numeric - autograd[i]).abs() < 1e-6 * numeric.abs().max(1.0), "element {i}: {} vs {numeric}", autograd[i]);
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let z = Tensor::zeros([3, 8, 4], (Kind::Float, tch::Device::Cpu));
    let msg = |r: anyhow::Result<_>| r.err().map(|e: anyhow::Error| e.to_string()).unwrap();
    assert!(msg(objective(0.05).forward(&z, 0, 0)).contains("global"));
    assert!(msg(objective(0.05).forward(&z, 4, 0)).contains("exceeds"));
    assert!(msg(objective(0.05).forward(&Tensor::zeros([3, 1, 4], (Kind::Float, tch::Device::Cpu)), 1, 0)).contains("at least 2"));
    assert!(LeJepaObjective::new(1.5, SigReg::default()).err().unwrap().to_string().contains("[0, 1]"));
    assert!(LeJepaObjective::new(-0.1, SigReg::default()).is_err());
}
