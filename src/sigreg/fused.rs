//! Epps–Pulley statistic and its exact gradient in one CPU kernel, without the `[*, N, M, knots]`
//! tensor the autograd version materialises (memory grows with N·M only, not with the knots).
//!
//! Per slice with samples x_n: cos(t_k x) and sin(t_k x) for the evenly spaced knots t_k = k·dt
//! come from one sincos per sample and a rotation per knot (angle addition), in f64.
//!   forward:  c̄_k = mean cos(t_k x), s̄_k = mean sin(t_k x),
//!             EP = N Σ_k w_k [(c̄_k − φ_k)² + s̄_k²]
//!   gradient: ∂EP/∂x_n = 2 Σ_k w_k t_k [s̄_k cos(t_k x_n) − (c̄_k − φ_k) sin(t_k x_n)]
//! The result enters autograd through a surrogate whose value is EP and whose derivative is the
//! gradient above: EP + Σ_n x_n g_n − stopgrad(Σ_n x_n g_n).

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::EppsPulley;

/// Knot spacing, target φ(t_k) and quadrature weights, as in [`EppsPulley`].
fn quadrature(ep: &EppsPulley) -> (f64, Vec<f64>, Vec<f64>) {
    let dt = ep.t_max / (ep.knots - 1) as f64;
    let phi: Vec<f64> = (0..ep.knots).map(|k| (-(k as f64 * dt).powi(2) / 2.0).exp()).collect();
    let weights = (0..ep.knots).map(|k| if k == 0 || k == ep.knots - 1 { dt } else { 2.0 * dt } * phi[k]).collect();
    (dt, phi, weights)
}

/// Calls `visit(k, cos(k·dt·x), sin(k·dt·x))` for every knot k, by rotation from one sincos.
#[inline(always)]
fn for_each_knot(x: f64, dt: f64, knots: usize, mut visit: impl FnMut(usize, f64, f64)) {
    let (s1, c1) = (dt * x).sin_cos();
    let (mut c, mut s) = (1.0, 0.0);
    for k in 0..knots {
        visit(k, c, s);
        (c, s) = (c * c1 - s * s1, s * c1 + c * s1);
    }
}

/// One slice: returns EP and writes ∂EP/∂x into `grad`.
fn slice_statistic_and_gradient(x: &[f64], grad: &mut [f64], dt: f64, phi: &[f64], weights: &[f64]) -> f64 {
    let knots = phi.len();
    let n = x.len() as f64;
    let (mut cos_sum, mut sin_sum) = (vec![0.0; knots], vec![0.0; knots]);
    for &value in x {
        for_each_knot(value, dt, knots, |k, c, s| {
            cos_sum[k] += c;
            sin_sum[k] += s;
        });
    }
    let mut statistic = 0.0;
    let (mut a, mut b) = (vec![0.0; knots], vec![0.0; knots]);
    for k in 0..knots {
        let (c_mean, s_mean) = (cos_sum[k] / n, sin_sum[k] / n);
        statistic += weights[k] * ((c_mean - phi[k]).powi(2) + s_mean.powi(2));
        let t = k as f64 * dt;
        a[k] = 2.0 * weights[k] * t * s_mean;
        b[k] = 2.0 * weights[k] * t * (c_mean - phi[k]);
    }
    for (g, &value) in grad.iter_mut().zip(x) {
        let mut sum = 0.0;
        for_each_knot(value, dt, knots, |k, c, s| sum += a[k] * c - b[k] * s);
        *g = sum;
    }
    statistic * n
}

/// x: `[*, N, M]` on the CPU → `[*, M]`, differentiable.
pub fn epps_pulley(ep: &EppsPulley, x: &Tensor) -> Tensor {
    assert_eq!(x.device(), Device::Cpu, "the fused Epps–Pulley kernel runs on the CPU");
    let size = x.size();
    let (n, m) = (size[size.len() - 2], size[size.len() - 1]);
    // Slices as contiguous rows: [*, M, N].
    let columns = Vec::<f64>::try_from(x.detach().transpose(-1, -2).to_kind(Kind::Double).contiguous().flatten(0, -1)).unwrap();
    let (dt, phi, weights) = quadrature(ep);
    let mut grads = vec![0.0; columns.len()];
    let stats: Vec<f64> = columns
        .par_chunks(n as usize)
        .zip(grads.par_chunks_mut(n as usize))
        .map(|(column, grad)| slice_statistic_and_gradient(column, grad, dt, &phi, &weights))
        .collect();
    let mut stat_shape = size[..size.len() - 2].to_vec();
    stat_shape.push(m);
    let statistic = Tensor::from_slice(&stats).view(stat_shape.as_slice()).to_kind(x.kind());
    if !x.requires_grad() {
        return statistic;
    }
    let mut grad_shape = size[..size.len() - 2].to_vec();
    grad_shape.extend([m, n]);
    let grad = Tensor::from_slice(&grads).view(grad_shape.as_slice()).transpose(-1, -2).to_kind(x.kind()); // [*, N, M]
    let linear = (x * grad).sum_dim_intlist(-2, false, None::<Kind>); // value Σ x g, derivative g
    statistic + &linear - linear.detach()
}
