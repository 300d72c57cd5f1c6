//! Full fine-tuning: the backbone and a linear head trained together on the labeled images (the paper's
//! "fine-tuned" columns, beside the frozen probe). AdamW on every weight, a linear warm-up over the first
//! tenth of the steps and a cosine decay to lr/1000, for `epochs` passes but at least [`MIN_STEPS`] steps;
//! one augmented view per image and step; BatchNorm in training mode while training; predictions from
//! the evaluation views.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use tch::{Device, Tensor, nn};

use super::{FeatureKind, features};
use crate::data::Split;
use crate::data::augment::{MultiCrop, ViewRecipe};
use crate::data::loader::{Loader, LoaderConfig};
use crate::models::Encoder;
use crate::optim::schedule::learning_rate;
use crate::optim::{AdamW, trainable};

/// The fewest optimizer steps of a fine-tuning (unless `epochs` is 0).
pub const MIN_STEPS: u64 = 200;

#[derive(Clone, Copy, Debug)]
pub struct FinetuneSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Seeds the head's initialisation, the order of the images and their views.
    pub seed: u64,
    /// Threads that decode and augment the training views.
    pub workers: usize,
}

impl Default for FinetuneSettings {
    fn default() -> Self {
        FinetuneSettings { epochs: 30, batch_size: 64, lr: 1e-3, weight_decay: 0.05, seed: 0, workers: 2 }
    }
}

/// Trains `encoder`'s backbone (in place) with a new linear head on `train`'s labels, on views drawn
/// with `views`, and returns the predicted class of each image of `test` (read through `eval`'s views).
pub fn finetune(
    encoder: &Encoder, views: &ViewRecipe, eval: &MultiCrop, train: &Split, test: &Split, classes: usize,
    settings: FinetuneSettings, device: Device,
) -> Result<Vec<i64>> {
    let labels = train.labels.as_ref().context("fine-tuning needs labeled training images")?;
    let n = labels.len();
    ensure!(n >= 2, "fine-tuning needs at least 2 labeled training images, got {n}");
    tch::manual_seed(settings.seed as i64);
    let head_store = nn::VarStore::new(device);
    let head = nn::linear(head_store.root() / "head", encoder.backbone.embed_dim(), classes as i64, Default::default());
    let mut params: Vec<(String, Tensor)> = trainable(&encoder.vs).into_iter().filter(|(name, _)| name.starts_with("backbone.")).collect();
    params.extend(trainable(&head_store));
    let mut optimizer = AdamW::new(params, settings.weight_decay);

    let batch_size = settings.batch_size.clamp(2, n);
    let batches_per_epoch = n / batch_size;
    let crop = MultiCrop { global_views: 1, global: views.clone(), local_views: 0, ..eval.clone() };
    let config = LoaderConfig {
        batch_size, shard: (0, 1), batches_per_epoch, seed: settings.seed, start: (0, 0), workers: settings.workers, prefetch: 2,
    };
    let loader = Loader::new(Arc::new(train.clone()), Arc::new(crop), config)?;
    // A few-shot set gives one batch an epoch: it still gets enough steps to move the weights and to
    // settle BatchNorm's running statistics, which evaluation reads.
    let total = if settings.epochs == 0 { 0 } else { ((batches_per_epoch * settings.epochs) as u64).max(MIN_STEPS) };
    let warmup = (total / 10).max(1);
    for step in 0..total {
        let batch = loader.next();
        let targets = batch.labels.context("a labeled split gave an unlabeled batch")?.to_device(device);
        optimizer.zero_grad();
        let logits = encoder.backbone.forward(&batch.global.to_device(device), true).embedding.apply(&head);
        logits.cross_entropy_for_logits(&targets).backward();
        optimizer.step(learning_rate(step, total, warmup, settings.lr, 1e-3));
    }
    let test_features = features(&encoder.backbone, test, eval, FeatureKind::Embedding, device)?;
    let predicted = tch::no_grad(|| test_features.to_device(device).apply(&head).argmax(-1, false).to_device(Device::Cpu));
    Ok(Vec::<i64>::try_from(predicted)?)
}
