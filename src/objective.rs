//! The LeJEPA objective (paper §5.1, eq. 7 and Algorithm 2): every view predicts the centre of the
//! global views, and SIGReg keeps each view's embeddings isotropic Gaussian.
//!
//! Input is the projector output z `[V, N, K]` whose first `global_views` rows are the global views.
//! No stop-gradient anywhere: gradients flow through the centre into the global views. This
//! module never sees models, data or files.

use anyhow::{Result, ensure};
use tch::{Kind, Tensor};

use crate::distributed::ProcessGroup;
use crate::sigreg::SigReg;

#[derive(Clone, Copy, Debug)]
pub struct LeJepaObjective {
    /// λ, the one trade-off knob: loss = (1 − λ)·invariance + λ·SIGReg.
    pub lambda: f64,
    pub sigreg: SigReg,
}

/// The three numbers of a step, as scalar tensors that still carry the graph.
pub struct LossTerms {
    pub loss: Tensor,
    pub invariance: Tensor,
    pub sigreg: Tensor,
}

impl LeJepaObjective {
    pub fn new(lambda: f64, sigreg: SigReg) -> Result<Self> {
        ensure!((0.0..=1.0).contains(&lambda), "lambda must lie in [0, 1], got {lambda}");
        Ok(LeJepaObjective { lambda, sigreg })
    }

    /// z: `[V, N, K]`, the first `global_views` of the V views global; `step` seeds the directions.
    pub fn forward(&self, z: &Tensor, global_views: usize, step: u64) -> Result<LossTerms> {
        self.forward_in_group(z, global_views, step, None)
    }

    /// The same when the batch is split over the processes of `group` (z is this process's shard):
    /// SIGReg is that of the global batch; the invariance stays this shard's mean, whose average
    /// over the processes (with the gradients') is the global batch's.
    pub fn forward_in_group(&self, z: &Tensor, global_views: usize, step: u64, group: Option<&ProcessGroup>) -> Result<LossTerms> {
        ensure!(z.dim() == 3, "projections must be [views, batch, dim], got shape {:?}", z.size());
        let (views, batch) = (z.size()[0] as usize, z.size()[1]);
        ensure!(global_views >= 1, "at least one global view is needed (global_views = 0)");
        ensure!(global_views <= views, "global_views = {global_views} exceeds the {views} views given");
        ensure!(batch >= 2, "SIGReg needs a batch of at least 2 samples, got {batch}");

        // μ_n = mean of the global views' projections: the prediction target of every view.
        let centers = z.narrow(0, 0, global_views as i64).mean_dim(0, true, None::<Kind>); // [1, N, K]
        // Mean over (v, n, k) of (μ_n − z[v,n,k])², as the official code (per-dimension MSE).
        let invariance = (centers - z).square().mean(None::<Kind>);
        // SIGReg of each view over the batch, averaged over all V views, global and local.
        let sigreg = match group {
            None => self.sigreg.forward(z, step),
            Some(group) => self.sigreg.forward_sharded(z, step, group)?,
        }
        .mean(None::<Kind>);
        let loss = &invariance * (1.0 - self.lambda) + &sigreg * self.lambda;
        Ok(LossTerms { loss, invariance, sigreg })
    }
}
