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

use anyhow::Result;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::EppsPulley;

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

/// One slice's Σ_n cos(t_k x_n) and Σ_n sin(t_k x_n), into `sums` = [cos_0 … cos_{K−1}, sin_0 … sin_{K−1}].
fn slice_sums(x: &[f64], sums: &mut [f64], dt: f64) {
    let knots = sums.len() / 2;
    let (cos_sum, sin_sum) = sums.split_at_mut(knots);
    for &value in x {
        for_each_knot(value, dt, knots, |k, c, s| {
            cos_sum[k] += c;
            sin_sum[k] += s;
        });
    }
}

/// EP of one slice from its sums over `n` samples, and the coefficients of its gradient
/// ∂EP/∂x_n = Σ_k a_k cos(t_k x_n) − b_k sin(t_k x_n).
fn statistic_and_coefficients(sums: &[f64], n: f64, dt: f64, phi: &[f64], weights: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let knots = phi.len();
    let mut statistic = 0.0;
    let (mut a, mut b) = (vec![0.0; knots], vec![0.0; knots]);
    for k in 0..knots {
        let (c_mean, s_mean) = (sums[k] / n, sums[knots + k] / n);
        statistic += weights[k] * ((c_mean - phi[k]).powi(2) + s_mean.powi(2));
        let t = k as f64 * dt;
        a[k] = 2.0 * weights[k] * t * s_mean;
        b[k] = 2.0 * weights[k] * t * (c_mean - phi[k]);
    }
    (statistic * n, a, b)
}

fn slice_gradient(x: &[f64], grad: &mut [f64], dt: f64, a: &[f64], b: &[f64]) {
    for (g, &value) in grad.iter_mut().zip(x) {
        let mut sum = 0.0;
        for_each_knot(value, dt, a.len(), |k, c, s| sum += a[k] * c - b[k] * s);
        *g = sum;
    }
}

/// x: `[*, N, M]` on the CPU → `[*, M]`, differentiable.
pub fn epps_pulley(ep: &EppsPulley, x: &Tensor) -> Tensor {
    epps_pulley_sharded(ep, x, 1, &|_| Ok(())).expect("no reduction to fail")
}

/// The same for one shard of a batch split over `processes`: `reduce` sums, in place, the per-slice
/// cos/sin sums `[*, M, 2·knots]` (f64) over all processes, so the statistic is the global batch's.
/// The gradient of this shard's samples is scaled by `processes`, because the processes' gradients
/// are averaged afterwards (as the backward of a differentiable all-reduce would do).
pub fn epps_pulley_sharded(ep: &EppsPulley, x: &Tensor, processes: usize, reduce: &dyn Fn(&Tensor) -> Result<()>) -> Result<Tensor> {
    assert_eq!(x.device(), Device::Cpu, "the fused Epps–Pulley kernel runs on the CPU");
    let size = x.size();
    let (n, m) = (size[size.len() - 2], size[size.len() - 1]);
    // Slices as contiguous rows: [*, M, N].
    let columns = Vec::<f64>::try_from(x.detach().transpose(-1, -2).to_kind(Kind::Double).contiguous().flatten(0, -1)).unwrap();
    let (dt, (_, phi, weights)) = (ep.knot_spacing(), ep.knot_values());
    let knots = ep.knots;
    let mut sums = vec![0.0; columns.len() / n as usize * 2 * knots];
    columns.par_chunks(n as usize).zip(sums.par_chunks_mut(2 * knots)).for_each(|(column, sums)| slice_sums(column, sums, dt));
    if processes > 1 {
        let reduced = Tensor::from_slice(&sums);
        reduce(&reduced)?;
        sums = Vec::<f64>::try_from(reduced).unwrap();
    }
    let n_global = (n as usize * processes) as f64;
    let per_slice: Vec<(f64, Vec<f64>, Vec<f64>)> =
        sums.par_chunks(2 * knots).map(|sums| statistic_and_coefficients(sums, n_global, dt, &phi, &weights)).collect();
    let stats: Vec<f64> = per_slice.iter().map(|p| p.0).collect();
    let mut stat_shape = size[..size.len() - 2].to_vec();
    stat_shape.push(m);
    let statistic = Tensor::from_slice(&stats).view(stat_shape.as_slice()).to_kind(x.kind());
    if !x.requires_grad() {
        return Ok(statistic);
    }
    let mut grads = vec![0.0; columns.len()];
    columns.par_chunks(n as usize).zip(grads.par_chunks_mut(n as usize)).zip(per_slice.par_iter()).for_each(|((column, grad), (_, a, b))| {
        slice_gradient(column, grad, dt, a, b);
    });
    let mut grad_shape = size[..size.len() - 2].to_vec();
    grad_shape.extend([m, n]);
    let grad = Tensor::from_slice(&grads).view(grad_shape.as_slice()).transpose(-1, -2).to_kind(x.kind()) * processes as f64; // [*, N, M]
    let linear = (x * grad).sum_dim_intlist(-2, false, None::<Kind>); // value Σ x g, derivative g
    // (linear − linear.detach()) is exactly zero, so the value is the statistic to the last bit.
    Ok(statistic + (&linear - linear.detach()))
}
