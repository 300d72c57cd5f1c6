//! Worker threads turn samples into ready batches of views ahead of the trainer, through a bounded
//! queue. Batch b of epoch e holds the same samples with the same views whatever the thread count,
//! so a resumed or distributed run sees exactly what an uninterrupted one would.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Result, ensure};
use crossbeam_channel::{Receiver, bounded};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::Tensor;

use super::Split;
use super::augment::{MultiCrop, view_rng};

pub struct Batch {
    /// `[V_g·N, C, S_g, S_g]`, view-major: view v of sample n is row v·N + n.
    pub global: Tensor,
    /// `[V_l·N, C, S_l, S_l]`, None without local views.
    pub local: Option<Tensor>,
    /// `[N]` class indices, when the split is labeled.
    pub labels: Option<Tensor>,
}

/// The sample order of an epoch: a fixed-seed permutation.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(u64::MAX - epoch); // views use 2^62 | (epoch << 40) | index, SIGReg's directions the step
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// Stacks per-sample views into one view-major tensor `[views·N, C, S, S]`.
fn stack(per_sample: &[Vec<Vec<f32>>], views: std::ops::Range<usize>, channels: usize, size: usize) -> Tensor {
    let n = per_sample.len();
    let mut flat = Vec::with_capacity(views.len() * n * channels * size * size);
    for v in views.clone() {
        for sample in per_sample {
            flat.extend_from_slice(&sample[v]);
        }
    }
    Tensor::from_slice(&flat).view([(views.len() * n) as i64, channels as i64, size as i64, size as i64])
}

pub struct Loader {
    receiver: Receiver<Batch>,
    _producer: JoinHandle<()>,
    pub batches_per_epoch: usize,
}

pub struct LoaderConfig {
    /// Samples per batch of this process.
    pub batch_size: usize,
    /// (rank, world): the global batch is `batch_size × world` samples and this process takes the
    /// rank-th slice of it; (0, 1) outside distributed training.
    pub shard: (usize, usize),
    /// Batches per epoch (at most images / batch_size; the rest of each epoch's order is unused).
    pub batches_per_epoch: usize,
    pub seed: u64,
    /// Where to start: (epoch, batch within the epoch), for resuming.
    pub start: (u64, usize),
    /// Threads that decode and augment.
    pub workers: usize,
    /// Batches prepared ahead of the trainer.
    pub prefetch: usize,
}

impl Loader {
    /// Endless stream of batches (the last incomplete batch of each epoch is dropped).
    pub fn new(split: Arc<Split>, crop: Arc<MultiCrop>, config: LoaderConfig) -> Result<Loader> {
        let n = split.len();
        let (rank, world) = config.shard;
        ensure!(rank < world, "shard {rank} of {world} does not exist");
        let global_batch = config.batch_size * world;
        ensure!(n >= global_batch, "the batch size {global_batch} exceeds the {n} training images");
        ensure!(config.batch_size >= 2, "the batch size must be at least 2 (SIGReg is a batch statistic)");
        let batches_per_epoch = config.batches_per_epoch;
        ensure!(
            (1..=n / global_batch).contains(&batches_per_epoch),
            "{batches_per_epoch} batches of {global_batch} do not fit in {n} images"
        );
        let (sender, receiver) = bounded(config.prefetch.max(1));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(config.workers.max(1)).build()?;
        let channels = split.channels;
        let producer = std::thread::spawn(move || {
            let (mut epoch, mut step) = config.start;
            loop {
                let order = epoch_order(n, config.seed, epoch);
                while step < batches_per_epoch {
                    let first = step * global_batch + rank * config.batch_size;
                    let indices = &order[first..first + config.batch_size];
                    let (indices, per_sample): (Vec<usize>, Vec<Vec<Vec<f32>>>) =
                        pool.install(|| indices.par_iter().map(|&i| sample_views(&split, &crop, config.seed, epoch, i)).unzip());
                    let vg = crop.global_views;
                    let batch = Batch {
                        global: stack(&per_sample, 0..vg, channels, crop.global.size),
                        local: (crop.local_views > 0).then(|| stack(&per_sample, vg..crop.views(), channels, crop.local.size)),
                        labels: split.labels.as_ref().map(|l| Tensor::from_slice(&indices.iter().map(|&i| l[i]).collect::<Vec<i64>>())),
                    };
                    if sender.send(batch).is_err() {
                        return; // the trainer is done
                    }
                    step += 1;
                }
                epoch += 1;
                step = 0;
            }
        });
        Ok(Loader { receiver, _producer: producer, batches_per_epoch })
    }

    /// The next batch (blocks while the workers are behind).
    pub fn next(&self) -> Batch {
        self.receiver.recv().expect("the loader thread stopped")
    }
}

/// The views of sample `index`. A file that fails to decode (it passed the start-up scan: truncated,
/// deleted since) is replaced by the next sample that decodes, so that a run never stops for one
/// bad file and the batch stays the same whatever the thread count; the store reports it.
fn sample_views(split: &Split, crop: &MultiCrop, seed: u64, epoch: u64, index: usize) -> (usize, Vec<Vec<f32>>) {
    let n = split.len();
    for k in 0..n {
        let i = (index + k) % n;
        if let Ok(image) = split.image(i) {
            return (i, crop.make_views(&image, &mut view_rng(seed, epoch, i as u64)));
        }
    }
    panic!("none of the {n} images of the training split can be decoded");
}

/// Evaluation views `[B, C, S, S]` of samples `rows` of a split (central square, resized,
/// normalised), decoded in parallel. An image that cannot be decoded is an error naming its file.
pub fn eval_batch(split: &Split, rows: std::ops::Range<usize>, crop: &MultiCrop) -> Result<Tensor> {
    let views: Vec<Vec<f32>> = rows.clone().into_par_iter().map(|i| Ok(crop.eval_view(&*split.image(i)?))).collect::<Result<_>>()?;
    let (c, s) = (split.channels as i64, crop.global.size as i64);
    Ok(Tensor::from_slice(&views.concat()).view([rows.len() as i64, c, s, s]))
}
