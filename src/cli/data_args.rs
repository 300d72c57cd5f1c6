//! The data flags shared by every command that reads images.

use anyhow::Result;

use crate::data::{self, Dataset, OpenOptions};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct DataArgs {
    /// Data source: folder:PATH, idx:DIR, npy:DIR, fashion-mnist, elpv, elpv-binary, digits.
    #[arg(long)]
    pub data: Option<String>,
    /// Skip unreadable image files (reported with a count) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Test fraction for sources without an official split (stratified, fixed seed; default 0.25).
    #[arg(long)]
    pub test_fraction: Option<f64>,
    /// Hold this fraction of the training split out as a validation split (stratified, fixed seed).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Use a fixed random subset of this many training images.
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Gigabytes of decoded image files kept in memory between epochs (image folders; default 1).
    /// Files are decoded at the size the views need: a 1024×1024 JPEG for 64-px views takes 0.2 MB.
    #[arg(long, value_name = "GB")]
    pub cache_gb: Option<f64>,
}

impl DataArgs {
    /// Opens `--data`, or `default_spec` when the flag is absent.
    pub fn open(&self, default_spec: &str) -> Result<Dataset> {
        let options = OpenOptions {
            skip_bad: self.skip_bad,
            test_fraction: self.test_fraction.unwrap_or(OpenOptions::default().test_fraction),
            val_fraction: self.val_fraction.unwrap_or(0.0),
            train_subset: self.train_subset,
            cache_bytes: match self.cache_gb {
                Some(gb) if gb.is_finite() && gb >= 0.0 => (gb * 1e9) as usize,
                Some(gb) => anyhow::bail!("--cache-gb {gb}: give a size in GB, 0 or more"),
                None => data::DEFAULT_CACHE_BYTES,
            },
        };
        let dataset = data::open(self.data.as_deref().unwrap_or(default_spec), &options)?;
        if !dataset.skipped.is_empty() {
            eprintln!("skipped {} unreadable file(s) (listed in the run's summary.json), e.g. {}", dataset.skipped.len(), dataset.skipped[0]);
        }
        Ok(dataset)
    }
}
