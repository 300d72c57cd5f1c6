//! Label-free health checks of a set of embeddings: how Gaussian (SIGReg) and how spread out
//! (covariance spectrum, effective rank) they are. A collapsed encoder shows up here first.

use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(Debug, Serialize)]
pub struct Spectrum {
    pub n: i64,
    pub dim: i64,
    /// Per-dimension mean and standard deviation (unbiased).
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Eigenvalues of the covariance matrix, largest first.
    pub eigenvalues: Vec<f64>,
    /// exp(entropy of the normalised eigenvalues) (Roy & Vetterli 2007): K for isotropic
    /// embeddings, 1 when all variance lies along one direction, 0 when fully collapsed.
    pub effective_rank: f64,
    /// The same of the correlation matrix (every dimension scaled to unit variance; constant ones
    /// dropped). A few high-variance channels (common in a ViT's last LayerNorm output) pull the
    /// covariance's rank towards 1 without any collapse; this one counts independent directions.
    pub correlation_effective_rank: f64,
}

/// exp(entropy) of the eigenvalue distribution; 0 when there is no variance at all.
fn entropy_rank(eigenvalues: &[f64]) -> f64 {
    let positive: Vec<f64> = eigenvalues.iter().map(|&e| e.max(0.0)).collect();
    let total: f64 = positive.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = positive.iter().filter(|&&e| e > 0.0).map(|&e| -(e / total) * (e / total).ln()).sum();
    entropy.exp()
}

/// embeddings: `[N, K]`.
pub fn spectrum(embeddings: &Tensor) -> Spectrum {
    let x = embeddings.to_kind(Kind::Double);
    let (n, dim) = (x.size()[0], x.size()[1]);
    let mean = x.mean_dim(0, true, None::<Kind>);
    let centered = &x - &mean;
    let covariance = centered.transpose(0, 1).matmul(&centered) / (n - 1).max(1) as f64; // [K, K]
    let mut eigenvalues = Vec::<f64>::try_from(covariance.linalg_eigvalsh("L")).unwrap();
    eigenvalues.reverse();
    let std = x.std_dim(0, true, false);
    let varying = std.gt(1e-12 * (std.max().double_value(&[]) + f64::MIN_POSITIVE));
    let scale = std.where_scalarother(&varying, 1.0);
    let kept = varying.nonzero().squeeze_dim(1); // the non-constant dimensions
    let correlation = (covariance / scale.outer(&scale)).index_select(0, &kept).index_select(1, &kept);
    let correlation_eigenvalues = Vec::<f64>::try_from(correlation.linalg_eigvalsh("L")).unwrap();
    Spectrum {
        n,
        dim,
        mean: Vec::<f64>::try_from(mean.squeeze_dim(0)).unwrap(),
        std: Vec::<f64>::try_from(std).unwrap(),
        effective_rank: entropy_rank(&eigenvalues),
        correlation_effective_rank: entropy_rank(&correlation_eigenvalues),
        eigenvalues,
    }
}
