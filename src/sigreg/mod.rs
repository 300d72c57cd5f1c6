//! SIGReg, Sketched Isotropic Gaussian Regularization (paper §4, official `lejepa/univariate` and
//! `lejepa/multivariate/slicing.py`).
//!
//! Project a batch of embeddings onto M random unit directions and test each projection against
//! N(0,1) with a univariate goodness-of-fit statistic; SIGReg is the mean over the directions.
//! This module owns the statistics, the directions and the reduction; it knows nothing about
//! views, models or files. Shapes follow the official code: a test maps `[*, N, M]` (samples on
//! axis −2) to `[*, M]`, one statistic per slice.

pub mod fused;
pub mod fused_cuda;

use anyhow::{Result, bail, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

use crate::distributed::ProcessGroup;

/// Epps–Pulley: N ∫ |φ̂_N(t) − e^{−t²/2}|² e^{−t²/2} dt, with the trapezoid rule on [−t_max, t_max].
///
/// The integrand is even, so the official code evaluates only t ∈ [0, t_max] with weights
/// dt·[1, 2, …, 2, 1]: exactly the trapezoid rule on the full interval with 2·knots − 1 knots.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EppsPulley {
    pub t_max: f64,
    /// Quadrature nodes on [0, t_max]; odd (official default 17).
    pub knots: usize,
}

impl Default for EppsPulley {
    fn default() -> Self {
        EppsPulley { t_max: 3.0, knots: 17 }
    }
}

/// Per-slice sums over a batch of cos(t·x) and sin(t·x), each `[*, M, knots]`.
///
/// Sums, not means, so that shards of one batch combine by addition: k shards reduced give
/// exactly the single-batch statistic and, through autograd, its gradient.
pub struct EcfSums {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl EcfSums {
    pub fn add(&self, other: &EcfSums) -> EcfSums {
        EcfSums { cos: &self.cos + &other.cos, sin: &self.sin + &other.sin }
    }
}

impl EppsPulley {
    pub fn new(t_max: f64, knots: usize) -> Result<Self> {
        ensure!(t_max > 0.0 && t_max.is_finite(), "Epps–Pulley t_max must be positive, got {t_max}");
        ensure!(knots >= 3 && knots % 2 == 1, "Epps–Pulley knots must be odd and at least 3, got {knots}");
        Ok(EppsPulley { t_max, knots })
    }

    /// dt, the spacing of the evenly spaced knots t_j = j·dt on [0, t_max].
    pub fn knot_spacing(&self) -> f64 {
        self.t_max / (self.knots - 1) as f64
    }

    /// Nodes t_j, target characteristic function φ(t_j) = e^{−t_j²/2}, and quadrature weights
    /// dt·[1, 2, …, 2, 1]·φ(t_j), each `[knots]`.
    fn knot_values(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let dt = self.knot_spacing();
        let t: Vec<f64> = (0..self.knots).map(|j| j as f64 * dt).collect();
        let phi: Vec<f64> = t.iter().map(|t| (-t * t / 2.0).exp()).collect();
        let weights: Vec<f64> = (0..self.knots)
            .map(|j| if j == 0 || j == self.knots - 1 { dt } else { 2.0 * dt } * phi[j])
            .collect();
        (t, phi, weights)
    }

    /// [`Self::knot_values`] as tensors of the given kind and device.
    fn quadrature(&self, like: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (t, phi, weights) = self.knot_values();
        let to = |v: &[f64]| to_device_nonblocking(Tensor::from_slice(v).to_kind(like.kind()), like.device());
        (to(&t), to(&phi), to(&weights))
    }

    /// x: `[*, N, M]` → sums over N of cos(t x) and sin(t x), `[*, M, knots]`.
    pub fn ecf_sums(&self, x: &Tensor) -> EcfSums {
        let (t, _, _) = self.quadrature(x);
        let xt = x.unsqueeze(-1) * t; // [*, N, M, knots]
        EcfSums {
            cos: xt.cos().sum_dim_intlist(-3, false, None::<Kind>),
            sin: xt.sin().sum_dim_intlist(-3, false, None::<Kind>),
        }
    }

    /// The statistic per slice, `[*, M]`, from the sums over a batch of `n` samples
    /// (`n` is the global batch when the sums were all-reduced across processes).
    pub fn statistic_from_sums(&self, sums: &EcfSums, n: i64) -> Tensor {
        let (_, phi, weights) = self.quadrature(&sums.cos);
        let cos_mean = &sums.cos / n as f64; // Re φ̂_N(t)
        let sin_mean = &sums.sin / n as f64; // Im φ̂_N(t)
        let err = (cos_mean - phi).square() + sin_mean.square(); // |φ̂_N(t) − φ(t)|², [*, M, knots]
        err.matmul(&weights) * n as f64
    }

    /// x: `[*, N, M]` → `[*, M]`.
    pub fn statistic(&self, x: &Tensor) -> Tensor {
        let n = x.size()[x.dim() - 2];
        self.statistic_from_sums(&self.ecf_sums(x), n)
    }
}

/// The univariate tests of the official library, selectable by name. All map `[*, N, M]` to
/// `[*, M]`; all are zero-ish for N(0,1) samples and grow as the projection departs from it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum NormalityTest {
    EppsPulley(EppsPulley),
    /// A² = −n − (1/n) Σ_k (2k−1)[log Φ(s_k) + log Φ(−s_{n+1−k})], s sorted.
    AndersonDarling,
    /// mean_k ((2k−1)/(2n) − Φ(s_k))² (the official "mean squared error" form, ≈ classical T/n).
    CramerVonMises,
    /// Cramér–von Mises − (mean Φ(x) − ½)².
    Watson,
    /// n·μ̂²/σ̂² + (n−1)(σ̂²−1)²/2 + n/6·(skew² + (kurt−3)²/4), σ̂² unbiased.
    ExtendedJarqueBera,
    /// The first two terms of the extended Jarque–Bera statistic (the VICReg-like part).
    Vcreg,
}

/// Names accepted by [`NormalityTest::from_name`], for help texts and errors.
pub const TEST_NAMES: &[&str] =
    &["epps-pulley", "anderson-darling", "cramer-von-mises", "watson", "extended-jarque-bera", "vcreg"];

impl NormalityTest {
    pub fn from_name(name: &str, t_max: f64, knots: usize) -> Result<Self> {
        Ok(match name {
            "epps-pulley" => NormalityTest::EppsPulley(EppsPulley::new(t_max, knots)?),
            "anderson-darling" => NormalityTest::AndersonDarling,
            "cramer-von-mises" => NormalityTest::CramerVonMises,
            "watson" => NormalityTest::Watson,
            "extended-jarque-bera" | "jarque-bera" => NormalityTest::ExtendedJarqueBera,
            "vcreg" => NormalityTest::Vcreg,
            other => bail!("unknown normality test '{other}'; known tests: {}", TEST_NAMES.join(", ")),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            NormalityTest::EppsPulley(_) => "epps-pulley",
            NormalityTest::AndersonDarling => "anderson-darling",
            NormalityTest::CramerVonMises => "cramer-von-mises",
            NormalityTest::Watson => "watson",
            NormalityTest::ExtendedJarqueBera => "extended-jarque-bera",
            NormalityTest::Vcreg => "vcreg",
        }
    }

    /// x: `[*, N, M]` → `[*, M]`. Epps–Pulley uses the fused kernels ([`fused`] on the CPU,
    /// [`fused_cuda`] on CUDA, where the autograd version remains the fallback).
    pub fn statistic(&self, x: &Tensor) -> Tensor {
        let n = x.size()[x.dim() - 2];
        let nf = n as f64;
        match self {
            NormalityTest::EppsPulley(ep) if x.device() == tch::Device::Cpu => fused::epps_pulley(ep, x),
            NormalityTest::EppsPulley(ep) if fused_cuda::ready(ep, x) => {
                fused_cuda::epps_pulley(ep, x).expect("the fused CUDA Epps–Pulley kernels")
            }
            NormalityTest::EppsPulley(ep) => ep.statistic(x),
            NormalityTest::AndersonDarling => {
                let (sorted, _) = x.sort(-2, false); // s_1 ≤ … ≤ s_n
                let log_cdf = sorted.special_log_ndtr(); // log Φ(s_k)
                let log_sf_reversed = sorted.neg().special_log_ndtr().flip([-2]); // log Φ(−s_{n+1−k})
                let two_k_minus_1 = order_weights(n, x) * 2.0 - 1.0; // [N, 1]
                let sum = (two_k_minus_1 * (log_cdf + log_sf_reversed)).sum_dim_intlist(-2, false, None::<Kind>);
                sum / -nf - nf
            }
            NormalityTest::CramerVonMises => cramer_von_mises(x),
            NormalityTest::Watson => {
                let mean_cdf = x.special_ndtr().mean_dim(-2, false, None::<Kind>);
                cramer_von_mises(x) - (mean_cdf - 0.5).square()
            }
            NormalityTest::ExtendedJarqueBera | NormalityTest::Vcreg => {
                let mean = x.mean_dim(-2, true, None::<Kind>);
                let var = x.var_dim(-2, true, true); // unbiased
                let stat_mean = mean.square() / (&var / nf);
                let stat_var = (&var - 1.0).square() / (2.0 / (nf - 1.0));
                let moment_terms = stat_mean + stat_var;
                let stat = if *self == NormalityTest::Vcreg {
                    moment_terms
                } else {
                    let standardized = (x - &mean) / var.sqrt().clamp_min(1e-8);
                    let skewness = standardized.pow_tensor_scalar(3).mean_dim(-2, true, None::<Kind>);
                    let kurtosis = standardized.pow_tensor_scalar(4).mean_dim(-2, true, None::<Kind>);
                    moment_terms + (skewness.square() + (kurtosis - 3.0).square() * 0.25) * (nf / 6.0)
                };
                stat.squeeze_dim(-2)
            }
        }
    }
}

/// k = 1..n as a `[n, 1]` column of x's kind and device (the order-statistic index).
fn order_weights(n: i64, like: &Tensor) -> Tensor {
    Tensor::arange_start(1, n + 1, (like.kind(), like.device())).unsqueeze(-1)
}

fn cramer_von_mises(x: &Tensor) -> Tensor {
    let n = x.size()[x.dim() - 2];
    let (sorted, _) = x.sort(-2, false);
    let plotting_positions = (order_weights(n, x) * 2.0 - 1.0) / (2.0 * n as f64); // (2k−1)/(2n)
    (plotting_positions - sorted.special_ndtr()).square().mean_dim(-2, false, None::<Kind>)
}

/// Unit-norm Gaussian directions A `[K, M]` (f64, CPU), a pure function of (seed, step): every
/// process, every rerun and every device draws the same A, and each step draws a fresh one.
pub fn directions(dim: i64, slices: i64, seed: u64, step: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step);
    let (k, m) = (dim as usize, slices as usize);
    let mut a: Vec<f64> = (0..k * m).map(|_| rng.sample(StandardNormal)).collect(); // row-major [K, M]
    // Column norms accumulated row by row: the same sums in the same order as column by column,
    // but reading memory in order (a column walk misses the cache at every element for large M).
    let mut squared_norms = vec![0.0; m];
    for row in a.chunks(m) {
        squared_norms.iter_mut().zip(row).for_each(|(sum, v)| *sum += v * v);
    }
    let norms: Vec<f64> = squared_norms.iter().map(|s| s.sqrt()).collect();
    for row in a.chunks_mut(m) {
        row.iter_mut().zip(&norms).for_each(|(v, norm)| *v /= norm);
    }
    Tensor::from_slice(&a).view([dim, slices])
}

/// A small host tensor (directions, quadrature constants) on `device` without stalling the step:
/// on CUDA a copy from ordinary host memory waits for every kernel queued before it, so the CPU
/// stops queueing the rest of the step; from pinned memory the copy is queued like a kernel.
pub fn to_device_nonblocking(host: Tensor, device: tch::Device) -> Tensor {
    match device {
        tch::Device::Cuda(index) => {
            // SAFETY: `host` is a live tensor for the call.
            let copy = crate::ffi::tensor_from_shim(|out| unsafe { lejepa_to_device_nonblocking(host.as_ptr() as *mut C_tensor, index as i32, out) });
            // Runs check the device at start-up; reaching this is a bug, reported with libtorch's reason.
            copy.unwrap_or_else(|e| panic!("copying to cuda:{index} failed: {e}"))
        }
        _ => host.to_device(device),
    }
}

unsafe extern "C" {
    fn lejepa_to_device_nonblocking(host: *mut C_tensor, device: i32, out: *mut *mut C_tensor) -> *mut std::ffi::c_char; // src/shim/cuda_memory.cpp
}

/// How the per-slice statistics are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Mean over slices (the paper's SIGReg; avoids sparse gradients of a max).
    Mean,
    Sum,
    /// Keep one statistic per slice.
    None,
}

/// SIGReg_T(A, z) = 1/|A| Σ_{a∈A} T(z a) (paper Def. 2), with A redrawn every step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SigReg {
    pub test: NormalityTest,
    /// Number of random directions M (the paper recommends 1024).
    pub slices: i64,
    /// Mixed with the step to seed the directions.
    pub seed: u64,
    pub reduction: Reduction,
}

impl Default for SigReg {
    fn default() -> Self {
        SigReg { test: NormalityTest::EppsPulley(EppsPulley::default()), slices: 1024, seed: 0, reduction: Reduction::Mean }
    }
}

impl SigReg {
    /// z: `[*, N, K]` → `[*]` (mean, sum) or `[*, M]` (none), with the directions of `step`.
    pub fn forward(&self, z: &Tensor, step: u64) -> Tensor {
        let dim = z.size()[z.dim() - 1];
        self.forward_with_directions(z, &directions(dim, self.slices, self.seed, step))
    }

    /// The same for a batch split over the processes of `group`: `z` `[*, N_r, K]` is this
    /// process's shard (equal shards). The cos/sin sums of the empirical characteristic function are
    /// summed over all processes, so every process gets the statistic of the global batch
    /// (N = N_r × processes) and, through the reduction, the gradient for its samples. Only
    /// Epps–Pulley decomposes into per-sample sums like this.
    pub fn forward_sharded(&self, z: &Tensor, step: u64, group: &ProcessGroup) -> Result<Tensor> {
        let NormalityTest::EppsPulley(ep) = self.test else {
            bail!("only the Epps–Pulley statistic can be computed over a batch split across processes, not {}", self.test.name());
        };
        let dim = z.size()[z.dim() - 1];
        let a = to_device_nonblocking(directions(dim, self.slices, self.seed, step).to_kind(z.kind()), z.device());
        let projected = z.matmul(&a); // [*, N_r, M]
        let reduce = |sums: &Tensor| group.sum_in_place(&[sums]);
        let per_slice = if projected.device() == tch::Device::Cpu {
            fused::epps_pulley_sharded(&ep, &projected, group.world, &reduce)?
        } else if fused_cuda::ready(&ep, &projected) {
            fused_cuda::epps_pulley_sharded(&ep, &projected, group.world, &reduce)?
        } else {
            let local = ep.ecf_sums(&projected); // [*, M, knots] each
            let knots = local.cos.size()[local.cos.dim() - 1];
            let global = group.sum(&Tensor::cat(&[&local.cos, &local.sin], -1))?;
            let sums = EcfSums { cos: global.narrow(-1, 0, knots), sin: global.narrow(-1, knots, knots) };
            ep.statistic_from_sums(&sums, projected.size()[projected.dim() - 2] * group.world as i64)
        }; // [*, M]
        Ok(match self.reduction {
            Reduction::Mean => per_slice.mean_dim(-1, false, None::<Kind>),
            Reduction::Sum => per_slice.sum_dim_intlist(-1, false, None::<Kind>),
            Reduction::None => per_slice,
        })
    }

    /// The same with caller-chosen directions A `[K, M]` (e.g. a fixed matrix read from a file).
    pub fn forward_with_directions(&self, z: &Tensor, directions: &Tensor) -> Tensor {
        let a = to_device_nonblocking(directions.to_kind(z.kind()), z.device());
        let per_slice = self.test.statistic(&z.matmul(&a)); // [*, M]
        match self.reduction {
            Reduction::Mean => per_slice.mean_dim(-1, false, None::<Kind>),
            Reduction::Sum => per_slice.sum_dim_intlist(-1, false, None::<Kind>),
            Reduction::None => per_slice,
        }
    }
}
