//! Data: where images come from (`--data SPEC`), how they are split, how they become views.
//!
//! A source is decoded once into memory as 8-bit images (1 or 3 channels) with optional labels and
//! a fixed train/test split. This module never touches autograd; the loader hands the trainer
//! ready tensors.

pub mod augment;
pub mod loader;
mod sources;

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// One decoded image: 8-bit, height × width × channels, channels 1 (gray) or 3 (RGB).
#[derive(Clone, Debug)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// Gray → RGB by replicating the channel (used when a folder mixes gray and colour images).
    pub fn to_rgb(&self) -> Image {
        if self.channels == 3 {
            return self.clone();
        }
        let pixels = self.pixels.iter().flat_map(|&p| [p, p, p]).collect();
        Image { channels: 3, pixels, ..*self }
    }
}

/// Images with their labels (class indices), if any.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub images: Vec<Image>,
    pub labels: Option<Vec<i64>>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        Split {
            images: indices.iter().map(|&i| self.images[i].clone()).collect(),
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
        }
    }
}

/// A dataset with its fixed split. `test` is empty for unlabeled data without an explicit split.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The `--data` spec it was opened from.
    pub spec: String,
    pub channels: usize,
    /// Class names, index = label; empty when unlabeled.
    pub classes: Vec<String>,
    /// Shared with the loader threads without a copy.
    pub train: std::sync::Arc<Split>,
    /// Held out of `train` with `val_fraction` (stratified, fixed seed); empty otherwise.
    pub val: Split,
    pub test: Split,
    /// Files skipped as unreadable (only with `--skip-bad`).
    pub skipped: Vec<String>,
}

/// How to open a source.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Skip unreadable files (counted and reported) instead of stopping at the first one.
    pub skip_bad: bool,
    /// Fraction held out as the test split where the source has no official split.
    pub test_fraction: f64,
    /// Fraction of the training split held out as a validation split (stratified, fixed seed).
    pub val_fraction: f64,
    /// Keep only this many training images (a fixed-seed random subset; for quick runs).
    pub train_subset: Option<usize>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { skip_bad: false, test_fraction: 0.25, val_fraction: 0.0, train_subset: None }
    }
}

/// Seed of every split and subset: splits are part of the dataset's definition, not of a run.
const SPLIT_SEED: u64 = 0x5EED_5_9117;

pub const KNOWN_SPECS: &str = "folder:PATH (class subfolders, or flat = unlabeled; train/ and test/ subfolders \
for an explicit split), idx:DIR (MNIST-format IDX files, gz or not), npy:DIR (images.npy [+ labels.npy], or \
train_/test_ images and labels), fashion-mnist, elpv, elpv-binary, digits";

/// Opens `--data SPEC`.
pub fn open(spec: &str, options: &OpenOptions) -> Result<Dataset> {
    let mut dataset = match spec.split_once(':') {
        Some(("folder", path)) => sources::folder(path.as_ref(), options)?,
        Some(("idx", path)) => sources::idx_dir(path.as_ref(), None)?,
        Some(("npy", path)) => sources::npy_dir(path.as_ref(), options)?,
        None if spec == "fashion-mnist" => sources::fashion_mnist()?,
        None if spec == "elpv" || spec == "elpv-binary" => sources::elpv(spec == "elpv-binary", options)?,
        None if spec == "digits" => sources::digits(options)?,
        _ => bail!("unknown data source '{spec}'; known: {KNOWN_SPECS}"),
    };
    dataset.spec = spec.to_string();
    if options.val_fraction > 0.0 {
        let strata = dataset.train.labels.clone().unwrap_or_else(|| vec![0; dataset.train.len()]);
        let (keep, val) = stratified_split(&strata, options.val_fraction);
        dataset.val = dataset.train.select(&val);
        dataset.train = std::sync::Arc::new(dataset.train.select(&keep));
    }
    if let Some(n) = options.train_subset {
        if n < dataset.train.len() {
            let mut order: Vec<usize> = (0..dataset.train.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
            order.truncate(n);
            order.sort_unstable();
            dataset.train = std::sync::Arc::new(dataset.train.select(&order));
        }
    }
    if dataset.train.is_empty() {
        bail!("{spec}: no training images");
    }
    Ok(dataset)
}

/// Per stratum, a fixed-seed shuffle sends round(fraction·count) samples to the test split.
/// Returns (train indices, test indices), each sorted.
pub fn stratified_split(strata: &[i64], test_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let mut keys: Vec<i64> = strata.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(SPLIT_SEED);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for key in keys {
        let mut members: Vec<usize> = (0..strata.len()).filter(|&i| strata[i] == key).collect();
        members.shuffle(&mut rng);
        let n_test = (members.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&members[..n_test]);
        train.extend_from_slice(&members[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Per-channel mean and standard deviation of pixel values in [0, 1] over (up to 5,000) training
/// images: the normalisation of this dataset's views.
pub fn channel_stats(split: &Split, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut sum, mut sum_sq, mut count) = (vec![0f64; channels], vec![0f64; channels], 0f64);
    for image in split.images.iter().take(5000) {
        let image = if image.channels == channels { image.clone() } else { image.to_rgb() };
        for pixel in image.pixels.chunks_exact(channels) {
            for (c, &v) in pixel.iter().enumerate() {
                let v = v as f64 / 255.0;
                sum[c] += v;
                sum_sq[c] += v * v;
            }
        }
        count += (image.width * image.height) as f64;
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std = sum_sq.iter().zip(&mean).map(|(s, m)| ((s / count - m * m).max(1e-12)).sqrt() as f32).collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}
