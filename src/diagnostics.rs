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
    let positive: Vec<f64> = eigenvalues.iter().map(|&e| e.max(0.0)).collect();
    let total: f64 = positive.iter().sum();
    let effective_rank = if total <= 0.0 {
        0.0
    } else {
        let entropy: f64 = positive.iter().filter(|&&e| e > 0.0).map(|&e| -(e / total) * (e / total).ln()).sum();
        entropy.exp()
    };
    Spectrum {
        n,
        dim,
        mean: Vec::<f64>::try_from(mean.squeeze_dim(0)).unwrap(),
        std: Vec::<f64>::try_from(x.std_dim(0, true, false)).unwrap(),
        eigenvalues,
        effective_rank,
    }
}
