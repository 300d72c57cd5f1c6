//! Data: where images come from (`--data SPEC`), how they are split, how they become views.
//!
//! A source is opened into a [`Store`] of 8-bit images (1 or 3 channels): the small built-in sets
//! in memory, `.npy` arrays memory-mapped, image folders as a list of files decoded when a batch
//! needs them. Splits are lists of rows of a store with their labels, so selecting a subset never
//! copies pixels. This module never touches autograd; the loader hands the trainer ready tensors.

pub mod augment;
pub mod loader;
pub mod pil;
mod sources;
pub mod store;

use std::sync::Arc;

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

pub use store::Store;

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

/// Some rows of a store, in order, with their labels (class indices), if any. Cloning or
/// selecting a split copies row numbers, never pixels.
#[derive(Clone)]
pub struct Split {
    store: Arc<Store>,
    rows: Vec<usize>,
    pub labels: Option<Vec<i64>>,
    /// Channels every image is read with (gray images are replicated when this is 3).
    pub channels: usize,
}

impl Default for Split {
    fn default() -> Self {
        Split { store: Arc::new(Store::Memory(Vec::new())), rows: Vec::new(), labels: None, channels: 1 }
    }
}

impl Split {
    /// Every row of `store`, in order.
    pub fn new(store: Arc<Store>, labels: Option<Vec<i64>>, channels: usize) -> Split {
        let rows = (0..store.len()).collect();
        Split { store, rows, labels, channels }
    }

    /// Images held in memory (built-in sources, tests).
    pub fn from_images(images: Vec<Image>, labels: Option<Vec<i64>>) -> Split {
        let channels = images.iter().map(|i| i.channels).max().unwrap_or(1);
        Split::new(Arc::new(Store::Memory(images.into_iter().map(Arc::new).collect())), labels, channels)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The samples at `indices`, in that order (the same store: no pixels are copied).
    pub fn select(&self, indices: &[usize]) -> Split {
        Split {
            store: self.store.clone(),
            rows: indices.iter().map(|&i| self.rows[i]).collect(),
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
            channels: self.channels,
        }
    }

    /// The same samples read as RGB (a gray dataset fed to a model of three channels).
    pub fn as_rgb(&self) -> Split {
        Split { channels: 3, ..self.clone() }
    }

    /// Image `i` (decoded now when it lives in a file and is not cached). The error names the file.
    pub fn image(&self, i: usize) -> Result<Arc<Image>> {
        self.store.image(self.rows[i], self.channels)
    }

    /// (width, height) of image `i` as stored, without decoding it.
    pub fn dimensions(&self, i: usize) -> (usize, usize) {
        self.store.dimensions(self.rows[i])
    }

    /// What sample `i` is: its file's path, or its row in the source.
    pub fn name(&self, i: usize) -> String {
        self.store.name(self.rows[i])
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Fixes the size image files are decoded at: the shorter side at least `side` pixels where the
    /// file has that many. Call it before the first image is read; no-op for in-memory sources.
    pub fn decode_at(&self, side: usize) {
        if let Store::Files(files) = &*self.store {
            files.decode_at(side);
        }
    }

    /// Files that passed the start-up scan but failed to decode since, as "path: reason".
    pub fn failures(&self) -> Vec<String> {
        match &*self.store {
            Store::Files(files) => files.failures(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Split({} images, {} channel(s), labeled: {})", self.len(), self.channels, self.labels.is_some())
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
    pub train: Arc<Split>,
    /// Held out of `train` with `val_fraction` (stratified, fixed seed); empty otherwise.
    pub val: Split,
    pub test: Split,
    /// Files skipped as unreadable (only with `--skip-bad`).
    pub skipped: Vec<String>,
}

impl Dataset {
    /// Fixes the size image files are decoded at, for every split (see [`Split::decode_at`]).
    pub fn decode_at(&self, side: usize) {
        for split in [&*self.train, &self.val, &self.test] {
            split.decode_at(side);
        }
    }

    /// Every file left out: unreadable at the start-up scan (`--skip-bad`) or at decode time since.
    pub fn unreadable(&self) -> Vec<String> {
        let failed: std::collections::BTreeSet<String> = [&*self.train, &self.val, &self.test].iter().flat_map(|s| s.failures()).collect();
        self.skipped.iter().cloned().chain(failed).collect()
    }
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
    /// Bytes of decoded image files kept in memory (image folders only).
    pub cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { skip_bad: false, test_fraction: 0.25, val_fraction: 0.0, train_subset: None, cache_bytes: DEFAULT_CACHE_BYTES }
    }
}

/// The default cache of decoded image files: 1 GB (ELPV at full size takes a quarter of it).
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

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
        dataset.train = Arc::new(dataset.train.select(&keep));
    }
    if let Some(n) = options.train_subset {
        if n < dataset.train.len() {
            let mut order: Vec<usize> = (0..dataset.train.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(SPLIT_SEED));
            order.truncate(n);
            order.sort_unstable();
            dataset.train = Arc::new(dataset.train.select(&order));
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

/// Per-channel mean and standard deviation of pixel values in [0, 1] over training images: the
/// normalisation of this dataset's views. In-memory sources use their first 5,000 images; image
/// folders an evenly spaced 2,000 (each costs a decode, and folders are often sorted by class).
pub fn channel_stats(split: &Split, channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows: Vec<usize> = match split.store() {
        Store::Files(_) if split.len() > 2000 => (0..2000).map(|k| k * split.len() / 2000).collect(),
        _ => (0..split.len().min(5000)).collect(),
    };
    let split = if channels == 3 { split.as_rgb() } else { split.clone() };
    let images: Vec<Result<Arc<Image>>> = {
        use rayon::prelude::*;
        rows.par_iter().map(|&i| split.image(i)).collect()
    };
    let (mut sum, mut sum_sq, mut count) = (vec![0f64; channels], vec![0f64; channels], 0f64);
    for image in images.into_iter().filter_map(Result::ok) {
        for pixel in image.pixels.chunks_exact(channels) {
            for (c, &v) in pixel.iter().enumerate() {
                let v = v as f64 / 255.0;
                sum[c] += v;
                sum_sq[c] += v * v;
            }
        }
        count += (image.width * image.height) as f64;
    }
    if count == 0.0 {
        bail!("{}: none of the {} images read for the normalisation statistics could be decoded", split.name(0), rows.len());
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std = sum_sq.iter().zip(&mean).map(|(s, m)| ((s / count - m * m).max(1e-12)).sqrt() as f32).collect();
    Ok((mean.iter().map(|&m| m as f32).collect(), std))
}

/// At most `limit` samples of a split, chosen per class in proportion (fixed seed), in row order:
/// the online probe's evaluation set, which must cover every class of a class-sorted split.
pub fn stratified_subset(split: &Split, limit: usize) -> Split {
    if limit >= split.len() {
        return split.clone();
    }
    let strata = split.labels.clone().unwrap_or_else(|| vec![0; split.len()]);
    let (_, kept) = stratified_split(&strata, limit as f64 / split.len() as f64);
    split.select(&kept)
}
