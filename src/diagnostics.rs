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

/// SIGReg (Epps–Pulley, the default 17 knots on [0, 3]) of n embeddings all at one point: the value a fully
/// collapsed embedding reads, against ≈ 1 for N(0, I).
pub fn collapsed_sigreg(n: i64) -> f64 {
    0.402 * n as f64
}

/// The label-free verdict on a finished run: its projector outputs on training images (SIGReg against
/// N(0, I) and effective rank) and whether SIGReg came down during training.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Images embedded and the projector's dimension K.
    pub n: i64,
    pub dim: i64,
    /// SIGReg (Epps–Pulley, 1,024 slices) of the n outputs: ≈ 1 for N(0, I), ≈ 0.40·n when collapsed.
    pub sigreg: f64,
    pub effective_rank: f64,
    /// The training SIGReg (the logged term, at the run's batch size), averaged over the first and the last
    /// tenth of the steps.
    pub training_sigreg_start: Option<f64>,
    pub training_sigreg_end: Option<f64>,
    /// What looks wrong, each with what to try; empty when nothing does.
    pub warnings: Vec<String>,
}

impl Health {
    pub fn new(n: i64, dim: i64, sigreg: f64, effective_rank: f64, training_sigreg: &[f64]) -> Health {
        let tenth = (training_sigreg.len() / 10).max(1);
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let (start, end) = if training_sigreg.len() >= 4 {
            (mean(&training_sigreg[..tenth]), mean(&training_sigreg[training_sigreg.len() - tenth..]))
        } else {
            (None, None)
        };
        let mut warnings = Vec::new();
        if effective_rank < 2.0_f64.min(dim as f64 / 2.0) {
            warnings.push(format!(
                "the embedding is narrow: effective rank {effective_rank:.2} of {dim} (near 1: nearly one direction). \
                 Raise λ so that N·λ (batch × λ) is at least 1–3, or use milder crops (docs/configuration.md)"
            ));
        }
        if let (Some(start), Some(end)) = (start, end) {
            if end > 0.8 * start {
                warnings.push(format!(
                    "SIGReg did not come down in training ({start:.3} at the start, {end:.3} at the end): the embedding is not \
                     becoming Gaussian. Train longer, or raise λ (N·λ of 1–3 is the measured range)"
                ));
            }
        }
        Health { n, dim, sigreg, effective_rank, training_sigreg_start: start, training_sigreg_end: end, warnings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Isotropic Gaussian outputs and a falling SIGReg pass; one-direction outputs or a flat SIGReg warn.
    #[test]
    fn health_warns_on_a_narrow_embedding_and_a_flat_sigreg() {
        tch::manual_seed(0);
        let isotropic = Tensor::randn([2000, 16], (Kind::Double, tch::Device::Cpu));
        let rank = spectrum(&isotropic).effective_rank;
        assert!(rank > 14.0, "{rank}");
        let falling: Vec<f64> = (0..100).map(|i| 10.0 / (1.0 + i as f64)).collect();
        assert!(Health::new(2000, 16, 1.0, rank, &falling).warnings.is_empty());

        let line = Tensor::randn([2000, 1], (Kind::Double, tch::Device::Cpu)).matmul(&Tensor::ones([1, 16], (Kind::Double, tch::Device::Cpu)));
        let narrow = spectrum(&(&line + Tensor::randn([2000, 16], (Kind::Double, tch::Device::Cpu)) * 1e-3)).effective_rank;
        assert!(narrow < 1.1, "{narrow}");
        let health = Health::new(2000, 16, 300.0, narrow, &falling);
        assert!(health.warnings.len() == 1 && health.warnings[0].contains("narrow"), "{:?}", health.warnings);

        let flat = vec![5.0; 100];
        let health = Health::new(2000, 16, 1.0, rank, &flat);
        assert!(health.warnings.len() == 1 && health.warnings[0].contains("did not come down"), "{:?}", health.warnings);
        assert_eq!((health.training_sigreg_start, health.training_sigreg_end), (Some(5.0), Some(5.0)));
        assert!(Health::new(2000, 16, 1.0, rank, &[5.0, 5.0]).warnings.is_empty(), "too short a run to judge");
    }
}
