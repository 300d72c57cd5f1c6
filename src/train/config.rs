//! The pretraining configuration: one struct, three layers. A preset gives every field, a TOML
//! file (`--config`) overrides any subset of them with the same keys, and flags override both.
//! The effective config is saved in the run directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::data::augment::MultiCrop;
use crate::models::Arch;

/// The arithmetic of a run's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// bf16 autocast: matmuls and convolutions in bf16, the rest in f32.
    Bf16,
    /// Everything in double precision: for exactness checks.
    F64,
}

/// Where a run computes: the CPU or one CUDA device, written cpu, cuda (= cuda:0) or cuda:N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ComputeDevice {
    Cpu,
    Cuda(usize),
}

impl ComputeDevice {
    pub fn is_cuda(self) -> bool {
        matches!(self, ComputeDevice::Cuda(_))
    }
}

impl std::str::FromStr for ComputeDevice {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<ComputeDevice> {
        Ok(match name {
            "cpu" => ComputeDevice::Cpu,
            "cuda" => ComputeDevice::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => ComputeDevice::Cuda(i),
                None => bail!("unknown device '{other}'; use cpu, cuda or cuda:N"),
            },
        })
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ComputeDevice::Cpu => write!(f, "cpu"),
            ComputeDevice::Cuda(0) => write!(f, "cuda"),
            ComputeDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl TryFrom<String> for ComputeDevice {
    type Error = anyhow::Error;
    fn try_from(name: String) -> Result<ComputeDevice> {
        name.parse()
    }
}

impl From<ComputeDevice> for String {
    fn from(device: ComputeDevice) -> String {
        device.to_string()
    }
}

impl From<ComputeDevice> for tch::Device {
    fn from(device: ComputeDevice) -> tch::Device {
        match device {
            ComputeDevice::Cpu => tch::Device::Cpu,
            ComputeDevice::Cuda(i) => tch::Device::Cuda(i),
        }
    }
}

/// Which flips the views get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Flip {
    /// No flips: mirrored digits or text are other classes.
    None,
    /// Horizontal flips with p 0.5 (the paper's).
    #[default]
    H,
    /// Horizontal and vertical flips, each with p 0.5.
    Hv,
}

/// The view recipe a run starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// The paper's multi-crop: global views of 0.3–1 and local views of 0.05–0.3 of the image's area.
    Lejepa,
    /// MINIMAL.md: same-size views only.
    Minimal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data source (see `--data`); the data flags --skip-bad, --test-fraction and --train-subset are
    /// options of opening it, not of the run.
    pub data: String,
    /// Backbone architecture name.
    pub arch: String,
    /// Projector widths: Linear-BN-ReLU for all but the last, which is a plain Linear.
    pub projector: Vec<i64>,
    /// A plain Linear of this width between backbone and projector (the official recipes: 512); the
    /// online probe then reads its output, as MINIMAL.md's does.
    #[serde(default)]
    pub embedding_dim: Option<i64>,
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule still spans `epochs`).
    pub max_steps: Option<u64>,
    /// Length of the learning-rate schedule in optimizer steps, instead of `epochs` × steps per epoch.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Images per optimizer step (before gradient accumulation: per micro-batch).
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size × grad_accum).
    pub grad_accum: usize,
    /// Peak learning rate (AdamW), reached after the warm-up; cosine decay to lr × final_lr_ratio.
    pub lr: f64,
    pub final_lr_ratio: f64,
    pub warmup_epochs: f64,
    /// Warm-up length in optimizer steps, instead of `warmup_epochs`.
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    pub weight_decay: f64,
    /// λ: loss = (1 − λ)·invariance + λ·SIGReg.
    pub lambda: f64,
    /// SIGReg: random directions per step, Epps–Pulley integration bound and knots.
    pub slices: i64,
    pub t_max: f64,
    pub knots: usize,
    pub drop_path: f64,
    /// Augmentation: lejepa (global 0.3–1 + local 0.05–0.3 crops) or minimal (MINIMAL.md, same-size views).
    pub augment: Augment,
    pub global_views: usize,
    pub local_views: usize,
    /// View sizes in pixels; default: the image size (at most 224) and 3/7 of it.
    pub global_size: Option<usize>,
    pub local_size: Option<usize>,
    /// Crop scales, as fractions of the image's area, of the global and the local views; default: the recipe's
    /// (lejepa: 0.3–1 and 0.05–0.3). On 28 px Fashion-MNIST milder ones gave the f32 hour about 2 points (RESULTS.md).
    pub global_scale: Option<[f64; 2]>,
    pub local_scale: Option<[f64; 2]>,
    /// Flips for the domain: none (digits, text), h (the paper's: photos), hv (cells, tissue, satellite and
    /// sky images, where up and down are arbitrary too).
    #[serde(default)]
    pub flip: Flip,
    /// RandomSolarize (p 0.2); off where brightness is the signal (electroluminescence images of defects).
    #[serde(default = "default_true")]
    pub solarize: bool,
    /// Colour jitter strength: 1 is the paper's (brightness and contrast ±40%, saturation ±20%, hue ±0.1), 0 none.
    #[serde(default = "default_one")]
    pub jitter: f64,
    /// A complete view recipe (the format of a run's augment.toml: every crop, jitter, blur and
    /// normalisation parameter) used instead of the one above.
    pub augment_file: Option<PathBuf>,
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    pub device: ComputeDevice,
    /// f32, bf16 (autocast), or f64 (everything in double precision: for exactness checks).
    pub precision: Precision,
    /// Distributed runs: BatchNorm statistics over the global batch (SyncBatchNorm), as a
    /// single process would compute them. Off: each process normalises with its own shard's.
    #[serde(default = "default_true")]
    pub sync_batch_norm: bool,
    /// libtorch intra-op threads (default: all cores).
    pub threads: Option<usize>,
    /// Data-loading threads.
    pub workers: usize,
    /// Online linear probe on detached features (when the data has labels).
    pub online_probe: bool,
    pub probe_lr: f64,
    pub probe_weight_decay: f64,
    /// Evaluate the online probe on at most this many test images each epoch.
    pub eval_images: Option<usize>,
    /// After training (labeled data): the frozen linear probe of the backbone, of raw pixels and of
    /// the same network at random init, fitted on this many training images (a stratified subset)
    /// and scored on `eval_images` test images. None: no final probe (`lejepa probe` does it later).
    #[serde(default)]
    pub final_probe_images: Option<usize>,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Also keep the backbone of every checkpoint as backbone-step<N>.safetensors (to probe how
    /// the features evolved), instead of only the latest.
    #[serde(default)]
    pub keep_backbones: bool,
    /// Parent folder of run directories.
    pub out: PathBuf,
}

fn default_one() -> f64 {
    1.0
}

fn default_true() -> bool {
    true
}

pub const PRESETS: &[&str] = &["default", "cpu-small", "cpu-hour", "cpu-hour-resnet", "minimal", "paper"];

impl Config {
    /// The named preset. Long by design: a table with one literal per preset, each read on its own.
    pub fn preset(name: &str) -> Result<Config> {
        let cpu_small = Config {
            data: "fashion-mnist".into(),
            arch: "vit-tiny-patch4-depth6".into(),
            projector: vec![512, 512, 64],
            embedding_dim: None,
            epochs: 1,
            max_steps: None,
            steps: None,
            batch_size: 128,
            grad_accum: 1,
            lr: 2e-3,
            final_lr_ratio: 1e-3,
            warmup_epochs: 0.1,
            warmup_steps: None,
            weight_decay: 5e-2,
            lambda: 0.05,
            slices: 256,
            t_max: 3.0,
            knots: 17,
            drop_path: 0.0,
            augment: Augment::Lejepa,
            global_views: 2,
            local_views: 4,
            global_size: None,
            local_size: None,
            global_scale: None,
            local_scale: None,
            augment_file: None,
            seed: 0,
            device: ComputeDevice::Cpu,
            precision: Precision::F32,
            sync_batch_norm: true,
            threads: None,
            workers: 2,
            online_probe: true,
            probe_lr: 1e-3,
            probe_weight_decay: 1e-7,
            eval_images: Some(2000),
            final_probe_images: None,
            checkpoint_every: 200,
            keep_backbones: false,
            flip: Flip::H,
            solarize: true,
            jitter: 1.0,
            out: "runs".into(),
        };
        Ok(match name {
            // The job `lejepa pretrain` runs with no arguments: a half-width ResNet-18 with the small-image stem
            // and mild crops (a quarter of the full width's compute: in 20 minutes on 2 cores it sees three times
            // the images and ends above raw pixels, where the full width ends level; RESULTS.md), a 480-step
            // schedule at batch 64 with a peak lr of 8e-3 (the best of 2e-3, 4e-3 and 8e-3 for so short a
            // schedule), then the frozen probe next to raw pixels and random init.
            "default" => Config {
                arch: "resnet18-small-w32".into(),
                lr: 8e-3,
                batch_size: 64,
                steps: Some(480),
                warmup_steps: Some(48),
                global_scale: Some([0.8, 1.0]),
                local_scale: Some([0.5, 0.8]),
                online_probe: false,
                eval_images: Some(5000),
                final_probe_images: Some(5000),
                checkpoint_every: 120,
                ..cpu_small
            },
            "cpu-small" => cpu_small,
            // The CPU hour of RESULTS.md: cpu-small in bf16 with the schedule spanning 6 epochs (52 minutes and
            // 86.1% on 2 cores of a CPU with bf16 units; 4 epochs in f32 fill the same hour).
            "cpu-hour" => Config { epochs: 6, precision: Precision::Bf16, ..cpu_small },
            // The best f32 hour of RESULTS.md: cpu-small with a ResNet-18 (small-image stem) and the mildest crops,
            // the schedule spanning 2 epochs and stopped at step 850 (a convolutional network learns these 28 px
            // images in fewer steps than the ViT).
            "cpu-hour-resnet" => Config {
                arch: "resnet18-small".into(),
                epochs: 2,
                max_steps: Some(850),
                global_scale: Some([0.8, 1.0]),
                local_scale: Some([0.5, 0.8]),
                ..cpu_small
            },
            // MINIMAL.md's recommended run: 4 same-size views, λ 0.02, timm's 512-d head as the embedding,
            // projector to 16, lr 2e-3, bs 256; its cosine ends at an absolute 1e-3 (eta_min), half the peak.
            "minimal" => Config {
                arch: "vit-small-patch8".into(),
                embedding_dim: Some(512),
                projector: vec![2048, 2048, 16],
                epochs: 800,
                batch_size: 256,
                lr: 2e-3,
                final_lr_ratio: 0.5,
                warmup_epochs: 1.0,
                lambda: 0.02,
                drop_path: 0.1,
                augment: Augment::Minimal,
                global_views: 4,
                local_views: 0,
                eval_images: None,
                ..cpu_small
            },
            // Paper §6.1: 2 global + 6 local views, λ 0.05, AdamW lr 5e-4, wd 5e-2; the official scripts'
            // 512-d embedding layer, then the projector 2048-2048-64.
            "paper" => Config {
                arch: "vit-small-patch16".into(),
                embedding_dim: Some(512),
                projector: vec![2048, 2048, 64],
                epochs: 100,
                batch_size: 256,
                lr: 5e-4,
                warmup_epochs: 10.0,
                lambda: 0.05,
                slices: 1024,
                drop_path: 0.1,
                global_views: 2,
                local_views: 6,
                eval_images: None,
                ..cpu_small
            },
            other => bail!("unknown preset '{other}'; known presets: {}", PRESETS.join(", ")),
        })
    }

    /// The default preset fitted to the images and the device, with the reason for each choice. Small
    /// images (at most 48 px: Fashion-MNIST, digits, CIFAR) keep the default; on a CPU larger ones get a
    /// ResNet-18 with the ImageNet stem (a 4× smaller feature map) at 96 px; on a GPU, the paper's
    /// ViT-S/16 at 224/96 px in bf16. Crop scales go from the default's mild ones at 28 px to the
    /// paper's at 224 px (`crop_scales_for`).
    pub fn adapted_to(mut self, dataset: &Dataset) -> (Config, Vec<String>) {
        let mut reasons = Vec::new();
        let short = median_short_side(dataset);
        if short <= 48 {
            return (self, reasons);
        }
        if self.device.is_cuda() {
            let size = if short >= 224 { 224 } else { short / 16 * 16 };
            self = Config {
                arch: "vit-small-patch16".into(),
                embedding_dim: Some(512),
                projector: vec![2048, 2048, 64],
                precision: Precision::Bf16,
                batch_size: 256,
                lr: 5e-4,
                steps: None,
                warmup_steps: None,
                epochs: 100,
                warmup_epochs: 10.0,
                local_views: 6,
                global_size: Some(size),
                local_size: Some(crate::data::augment::local_size_for(size, 16)),
                global_scale: None,
                local_scale: None,
                ..self
            };
            reasons.push(format!("images of {short} px on a GPU: the paper's vit-small-patch16 at {size}/{} px in bf16, batch 256, 100 epochs", self.local_size.unwrap()));
        } else {
            let size = short.min(96);
            let (global, local) = crop_scales_for(size);
            // The full-width ResNet-18 with the ImageNet stem at 96 px costs about what the full width costs at
            // 28 px with the small stem: 160 steps at the first default job's lr (RESULTS.md).
            self = Config {
                arch: "resnet18".into(),
                lr: 2e-3,
                steps: Some(160),
                warmup_steps: Some(16),
                checkpoint_every: 40,
                global_size: Some(size),
                local_size: Some(crate::data::augment::local_size_for(size, 1)),
                global_scale: Some(global),
                local_scale: Some(local),
                ..self
            };
            reasons.push(format!(
                "images of {short} px on a CPU: resnet18 (ImageNet stem) at {size}/{} px views for 160 steps, about 20 minutes on 2 cores",
                self.local_size.unwrap()
            ));
            reasons.push(crop_reason(size));
        }
        (self, reasons)
    }

    /// Clears what a newly `given` key replaces under another name: `epochs` a step-counted schedule (unless
    /// `steps` is given too), `warmup_epochs` a step-counted warm-up, `augment_file` the crop scales. Used for a
    /// new run's flags and for a sweep's grid keys alike.
    pub fn clear_replaced(&mut self, given: impl Fn(&str) -> bool) {
        if given("epochs") && !given("steps") {
            (self.steps, self.warmup_steps) = (None, None);
        }
        if given("warmup_epochs") && !given("warmup_steps") {
            self.warmup_steps = None;
        }
        if given("augment_file") {
            (self.global_scale, self.local_scale) = (None, None);
        }
    }

    /// A preset with a TOML file's keys laid over it (any subset of the fields).
    pub fn from_preset_and_file(preset: &str, file: Option<&Path>) -> Result<Config> {
        Config::layered(Config::preset(preset)?, file)
    }

    /// `config` with a TOML file's keys laid over it.
    pub fn layered(mut config: Config, file: Option<&Path>) -> Result<Config> {
        let Some(file) = file else { return Ok(config) };
        let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read config", file.display()))?;
        let overrides: toml::Table = text.parse().with_context(|| format!("{}: not valid TOML", file.display()))?;
        config.clear_replaced(|key| overrides.contains_key(key)); // as a flag would: `epochs` replaces a preset's `steps`
        let mut merged = toml::Table::try_from(&config)?;
        for (key, value) in overrides {
            merged.insert(key, value);
        }
        merged.try_into().with_context(|| format!("{}: invalid config", file.display()))
    }

    pub fn validate(&self) -> Result<()> {
        Arch::from_name(&self.arch)?;
        ensure!(self.batch_size >= 2, "batch_size must be at least 2, got {}", self.batch_size);
        ensure!(self.grad_accum >= 1, "grad_accum must be at least 1");
        ensure!(self.epochs >= 1, "epochs must be at least 1");
        ensure!(self.steps != Some(0), "steps must be at least 1");
        ensure!(self.final_probe_images.is_none_or(|n| n >= 2), "final_probe_images must be at least 2 (or unset)");
        ensure!(self.embedding_dim.is_none_or(|d| d > 0), "embedding_dim must be positive (or unset)");
        ensure!(self.lr > 0.0, "lr must be positive");
        ensure!((0.0..=1.0).contains(&self.lambda), "lambda must lie in [0, 1], got {}", self.lambda);
        ensure!(self.global_views >= 1, "global_views must be at least 1");
        ensure!(self.slices >= 1, "slices must be at least 1");
        ensure!((0.0..1.0).contains(&self.drop_path), "drop_path must lie in [0, 1)");
        ensure!(!self.projector.is_empty(), "projector needs at least one layer");
        ensure!((0.0..=2.5).contains(&self.jitter), "jitter must lie in [0, 2.5] (1 is the paper's strength), got {}", self.jitter);
        ensure!(
            self.augment_file.is_none() || (self.flip, self.solarize, self.jitter) == (Flip::H, true, 1.0),
            "flip, solarize and jitter cannot be combined with augment_file (the file sets them itself)"
        );
        for (name, scale) in [("global_scale", self.global_scale), ("local_scale", self.local_scale)] {
            if let Some([low, high]) = scale {
                ensure!(0.0 < low && low <= high && high <= 1.0, "{name} must be two fractions of the image's area with 0 < low ≤ high ≤ 1, got {low}, {high}");
            }
        }
        ensure!(self.augment_file.is_none() || (self.global_scale.is_none() && self.local_scale.is_none()),
                "global_scale and local_scale cannot be combined with augment_file (the file sets every crop scale itself)");
        Ok(())
    }

    /// The multi-crop recipe for this dataset (views sized for its images and the ViT patch).
    pub fn multicrop(&self, dataset: &Dataset) -> Result<MultiCrop> {
        let multiple_of = match Arch::from_name(&self.arch)? {
            Arch::Vit { patch, .. } => patch as usize,
            Arch::Resnet { .. } => 1,
        };
        if let Some(path) = &self.augment_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the view recipe", path.display()))?;
            let crop: MultiCrop = toml::from_str(&text).with_context(|| format!("{}: invalid view recipe", path.display()))?;
            crop.validate().map_err(|e| anyhow::anyhow!("{}: invalid view recipe: {e}", path.display()))?;
            ensure!(crop.mean.len() == dataset.channels && crop.std.len() == dataset.channels, "{}: mean/std need {} channel(s)", path.display(), dataset.channels);
            ensure!(crop.global.size % multiple_of == 0 && crop.local.size % multiple_of == 0, "{}: view sizes must be multiples of the patch size {multiple_of}", path.display());
            dataset.decode_at(crop.decode_side());
            return Ok(crop);
        }
        let (width, height) = dataset.train.dimensions(0);
        let image_size = width.min(height);
        let mut crop = match self.augment {
            Augment::Minimal => MultiCrop::minimal(image_size, multiple_of, self.global_views),
            Augment::Lejepa => MultiCrop::lejepa(image_size, multiple_of, self.global_views, self.local_views),
        };
        // A global size given alone sets the local size to 3/7 of it, as the default does.
        let global_size = self.global_size.unwrap_or(crop.global.size);
        let local_size = self.local_size.unwrap_or(if self.global_size.is_some() {
            crate::data::augment::local_size_for(global_size, multiple_of)
        } else {
            crop.local.size
        });
        for (recipe, size, scale) in [(&mut crop.global, global_size, self.global_scale), (&mut crop.local, local_size, self.local_scale)] {
            recipe.size = size;
            if self.augment == Augment::Lejepa {
                recipe.blur_kernel = crate::data::augment::blur_kernel_for(size); // minimal keeps MINIMAL.md's 7
            }
            if let Some(scale) = scale {
                recipe.scale = scale;
            }
        }
        for recipe in [&mut crop.global, &mut crop.local] {
            (recipe.flip_p, recipe.vflip_p) = match self.flip {
                Flip::None => (0.0, 0.0),
                Flip::H => (recipe.flip_p, 0.0),
                Flip::Hv => (0.5, 0.5),
            };
            if !self.solarize {
                recipe.solarize_p = 0.0;
            }
            recipe.brightness *= self.jitter;
            recipe.contrast *= self.jitter;
            recipe.saturation *= self.jitter;
            recipe.hue = (recipe.hue * self.jitter).min(0.5);
            if dataset.channels == 1 {
                // On one channel saturation, hue and grayscale change nothing: the recipe says so.
                (recipe.saturation, recipe.hue, recipe.grayscale_p) = (0.0, 0.0, 0.0);
            }
        }
        for (kind, size) in [("global", crop.global.size), ("local", crop.local.size)] {
            ensure!(size % multiple_of == 0, "{kind} view size {size} is not a multiple of the patch size {multiple_of} of {}", self.arch);
        }
        crop.validate().map_err(|e| anyhow::anyhow!("invalid view recipe: {e}"))?;
        dataset.decode_at(crop.decode_side());
        (crop.mean, crop.std) = crate::data::channel_stats(&dataset.train, dataset.channels)?;
        Ok(crop)
    }
}

/// The median shorter side of up to 101 evenly spaced training images (headers only for files).
fn median_short_side(dataset: &Dataset) -> usize {
    let n = dataset.train.len();
    if n == 0 {
        return 0;
    }
    let mut sides: Vec<usize> = (0..=100).map(|k| k * (n - 1) / 100).map(|i| {
        let (w, h) = dataset.train.dimensions(i);
        w.min(h)
    }).collect();
    sides.sort_unstable();
    sides[sides.len() / 2]
}

pub fn crop_reason(size: usize) -> String {
    let (global, local) = crop_scales_for(size);
    format!("crop scales for {size}-px views: global {:.2}–1, local {:.2}–{:.2} of the image (the paper's 0.3–1 and 0.05–0.3 are for 224 px)", global[0], local[0], local[1])
}

/// Crop scales (fractions of the image's area) for views of `size` pixels: the default's mild
/// global 0.8–1 and local 0.5–0.8 at 28 px, moving linearly to the paper's 0.3–1 and 0.05–0.3 at 224 px,
/// so that a small view still holds a recognisable part of the image.
pub fn crop_scales_for(size: usize) -> ([f64; 2], [f64; 2]) {
    let t = ((size as f64 - 28.0) / (224.0 - 28.0)).clamp(0.0, 1.0); // 0 at 28 px, 1 at 224 px
    let mix = |small: f64, paper: f64| ((small + t * (paper - small)) * 100.0).round() / 100.0;
    ([mix(0.8, 0.3), 1.0], [mix(0.5, 0.05), mix(0.8, 0.3)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cpu-hour must stay the recipe RESULTS.md measured: cpu-small with only the schedule's length and the
    /// precision changed.
    #[test]
    fn cpu_hour_is_cpu_small_in_bf16_for_six_epochs() {
        let hour = toml::Table::try_from(Config::preset("cpu-hour").unwrap()).unwrap();
        assert_eq!(keys_changed_from_cpu_small(&hour), ["epochs", "precision"]);
        assert_eq!(hour["epochs"].as_integer(), Some(6));
        assert_eq!(hour["precision"].as_str(), Some("bf16"));
        for name in PRESETS {
            Config::preset(name).unwrap().validate().unwrap();
        }
    }

    /// The keys where a preset differs from cpu-small, or that cpu-small leaves unset, sorted.
    fn keys_changed_from_cpu_small(preset: &toml::Table) -> Vec<&str> {
        let small = toml::Table::try_from(Config::preset("cpu-small").unwrap()).unwrap();
        let mut changed: Vec<&str> = preset.keys().filter(|k| small.get(k.as_str()) != Some(&preset[k.as_str()])).map(String::as_str).collect();
        changed.sort();
        changed
    }

    /// cpu-hour-resnet must stay the run RESULTS.md measured: cpu-small with the backbone, the crops and the
    /// schedule changed, and every key equal to the run's config.toml (results/fashion-mnist-resnet-hour/) but
    /// the three the run's flags set.
    #[test]
    fn cpu_hour_resnet_is_the_measured_run() {
        let hour = toml::Table::try_from(Config::preset("cpu-hour-resnet").unwrap()).unwrap();
        assert_eq!(keys_changed_from_cpu_small(&hour), ["arch", "epochs", "global_scale", "local_scale", "max_steps"]);
        // Read as a Config: keys added since (flip, solarize, jitter) take their defaults, the recipe it ran.
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/results/fashion-mnist-resnet-hour/config.toml")).unwrap();
        let measured = toml::Table::try_from(toml::from_str::<Config>(&text).unwrap()).unwrap();
        for (key, value) in &hour {
            if !["checkpoint_every", "keep_backbones", "out"].contains(&key.as_str()) {
                assert_eq!(Some(value), measured.get(key), "{key}");
            }
        }
    }

    /// The default job is the run measured in RESULTS.md ("the default job"): every key but where it wrote.
    #[test]
    fn the_default_preset_is_the_measured_default_job() {
        let default = toml::Table::try_from(Config::preset("default").unwrap()).unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/results/default-job/lr008/config.toml")).unwrap();
        let measured = toml::Table::try_from(toml::from_str::<Config>(&text).unwrap()).unwrap();
        for (key, value) in &default {
            if !["checkpoint_every", "out"].contains(&key.as_str()) {
                assert_eq!(Some(value), measured.get(key), "{key}");
            }
        }
        assert_eq!(default.len(), measured.len());
    }

    /// The presets named after official recipes are those recipes (values from MINIMAL.md, the paper's §6.1
    /// and the official launch scripts, as ../shared/reference lists them): a 512-d embedding layer (timm's
    /// `num_classes=512`, the scripts' `embedding_dim=512`) before the projector, and MINIMAL.md's views,
    /// blur kernel of 7 and absolute learning-rate floor of 1e-3.
    #[test]
    fn the_official_presets_have_the_official_heads_and_views() {
        let minimal = Config::preset("minimal").unwrap();
        assert_eq!((minimal.arch.as_str(), minimal.embedding_dim, minimal.projector.as_slice()), ("vit-small-patch8", Some(512), &[2048, 2048, 16][..]));
        assert_eq!((minimal.lambda, minimal.lr, minimal.batch_size, minimal.drop_path, minimal.weight_decay), (0.02, 2e-3, 256, 0.1, 5e-2));
        assert!((minimal.lr * minimal.final_lr_ratio - 1e-3).abs() < 1e-15, "CosineAnnealingLR(eta_min=1e-3)");
        let crop = minimal.multicrop(&dataset_of(128, 3)).unwrap();
        assert_eq!((crop.global_views, crop.local_views, crop.global.size, crop.global.blur_kernel, crop.global.scale), (4, 0, 128, 7, [0.08, 1.0]));
        let paper = Config::preset("paper").unwrap();
        assert_eq!((paper.arch.as_str(), paper.embedding_dim, paper.projector.as_slice()), ("vit-small-patch16", Some(512), &[2048, 2048, 64][..]));
        assert_eq!((paper.lambda, paper.lr, paper.weight_decay, paper.global_views, paper.local_views), (0.05, 5e-4, 5e-2, 2, 6));
        // The GPU branch of the fitted default is the paper's recipe, head included.
        let gpu = Config { device: ComputeDevice::Cuda(0), ..Config::preset("default").unwrap() };
        let (fitted, _) = gpu.adapted_to(&dataset_of(300, 3));
        assert_eq!((fitted.embedding_dim, fitted.projector), (paper.embedding_dim, paper.projector));
    }

    fn dataset_of(side: usize, channels: usize) -> Dataset {
        let image = || crate::data::Image { width: side + side / 3, height: side, channels, pixels: vec![0; (side + side / 3) * side * channels] };
        let train = crate::data::Split::from_images((0..3).map(|_| image()).collect(), None);
        Dataset { spec: format!("{side}px"), channels, classes: Vec::new(), train: std::sync::Arc::new(train), val: Default::default(), test: Default::default(), skipped: Vec::new() }
    }

    /// The data-fitted default: small images keep the measured default job; larger ones on a CPU get the
    /// ImageNet-stem ResNet at no more than 96 px; on a GPU the paper's ViT-S/16 at 224/96 in bf16.
    #[test]
    fn the_default_preset_is_fitted_to_image_size_and_device() {
        let default = Config::preset("default").unwrap();
        for side in [28, 32, 48] {
            let (fitted, reasons) = default.clone().adapted_to(&dataset_of(side, 1));
            assert_eq!((fitted, reasons.len()), (default.clone(), 0), "{side} px");
        }
        for (side, size, local) in [(96, 96, 41), (300, 96, 41), (1024, 96, 41), (64 + 8, 72, 31)] {
            let (fitted, reasons) = default.clone().adapted_to(&dataset_of(side, 3));
            assert_eq!((fitted.arch.as_str(), fitted.global_size, fitted.local_size), ("resnet18", Some(size), Some(local)), "{side} px");
            assert_eq!((fitted.precision, fitted.steps), (Precision::F32, Some(160)));
            assert_eq!(reasons.len(), 2);
            fitted.validate().unwrap();
        }
        let gpu = Config { device: ComputeDevice::Cuda(0), ..default.clone() };
        for (side, size) in [(300, 224), (1024, 224), (96, 96), (100, 96)] {
            let (fitted, _) = gpu.clone().adapted_to(&dataset_of(side, 3));
            assert_eq!((fitted.arch.as_str(), fitted.precision), ("vit-small-patch16", Precision::Bf16));
            assert_eq!((fitted.global_size, fitted.local_size.map(|l| l % 16)), (Some(size), Some(0)), "{side} px");
            assert_eq!((fitted.global_scale, fitted.steps), (None, None), "the paper's crops and epochs");
        }
        // The CPU box's crops are the default's at 28 px and the paper's (§6.1: 0.3–1 and 0.05–0.3) at 224.
        assert_eq!(crop_scales_for(28), (default.global_scale.unwrap(), default.local_scale.unwrap()));
        assert_eq!(crop_scales_for(224), ([0.3, 1.0], [0.05, 0.3]));
        let (g, l) = crop_scales_for(96);
        assert!(0.3 < g[0] && g[0] < 0.8 && 0.05 < l[0] && l[0] < 0.5 && l[0] < l[1], "{g:?} {l:?}");
    }
}
