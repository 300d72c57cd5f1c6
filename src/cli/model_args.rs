//! Which frozen backbone an evaluation command uses: a pretraining run, or any safetensors file
//! with timm's names (from lejepa or from timm, e.g. a model a user brings) with its architecture,
//! and how its images are normalised: as the weights were trained.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use tch::{Device, Tensor, nn};

use crate::data::augment::MultiCrop;
use crate::data::{Dataset, Split, channel_stats};
use crate::data::pil::TimmResize;
use crate::models::{Arch, Encoder, Projector, TimmPreprocessing, copy_variables, read_weights};
use crate::train::config::Config;
use crate::train::parse_device;

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A pretraining run directory (uses its config.toml and backbone.safetensors).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Backbone weights with timm's parameter names: a run's backbone.safetensors (or its
    /// checkpoint.safetensors, whose backbone part is read), a folder written by `lejepa export` or a run
    /// directory, or a timm model's file. Needs --arch (lejepa's name). Alias: --checkpoint.
    #[arg(long = "weights", visible_alias = "checkpoint", value_name = "FILE", requires = "arch")]
    pub checkpoint: Option<PathBuf>,
    /// Architecture of --weights, e.g. vit-small-patch16 or resnet50 (timm's configurations).
    #[arg(long)]
    pub arch: Option<String>,
    /// Evaluation image size, rounded to the patch size (default: the size the weights were trained at
    /// where known, else timm's for its architectures, else the data's shorter side up to 224).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Image normalisation: run (the statistics the weights were trained with: a run's, or an exported
    /// folder's), imagenet, data (this data's own), or MEAN,STD values (one pair, or one mean per channel
    /// then one std per channel). Default: the weights' own where known; for weights of timm's
    /// architectures, timm's pretrained_cfg with its resize and crop (0.5/0.5 for vit-*-patch16, ImageNet's
    /// for DINOv2 and the ResNets); else ImageNet's for 3 channels and the data's for 1.
    #[arg(long, value_name = "run|imagenet|data|MEAN,STD")]
    pub normalize: Option<Normalize>,
}

/// How evaluation images are normalised, per channel: (x − mean) / std of pixel values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub enum Normalize {
    /// The statistics the weights were trained with.
    Run,
    /// ImageNet's, which timm's and DINOv2's weights expect.
    Imagenet,
    /// The data's own, from its training split.
    Data,
    Values { mean: Vec<f32>, std: Vec<f32> },
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl FromStr for Normalize {
    type Err = String;

    fn from_str(text: &str) -> Result<Normalize, String> {
        match text {
            "run" => return Ok(Normalize::Run),
            "imagenet" => return Ok(Normalize::Imagenet),
            "data" => return Ok(Normalize::Data),
            _ => {}
        }
        let values: Vec<f32> = text
            .split(',')
            .map(|v| v.trim().parse::<f32>().map_err(|_| format!("'{text}': give run, imagenet, data, or MEAN,STD numbers (e.g. 0.5,0.25)")))
            .collect::<Result<_, _>>()?;
        if values.len() % 2 != 0 || !(values.len() == 2 || values.len() == 6) {
            return Err(format!("'{text}': give one mean and one std (2 numbers) or three of each (6 numbers), found {}", values.len()));
        }
        let (mean, std) = values.split_at(values.len() / 2);
        if std.iter().any(|&s| !(s > 0.0)) {
            return Err(format!("'{text}': the std values must be positive"));
        }
        Ok(Normalize::Values { mean: mean.to_vec(), std: std.to_vec() })
    }
}

/// The normalisation an evaluation uses, and where it came from (printed and written to JSON).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Preprocessing {
    /// The side of the square evaluation view.
    pub size: usize,
    /// timm's resize and centre crop; None: the central square resized to `size`.
    pub resize: Option<TimmResize>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// e.g. "the run's (RUN/augment.toml)", "ImageNet's", "the data's".
    pub normalization: String,
}

impl std::fmt::Display for Preprocessing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f32]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ");
        match self.resize {
            None => write!(f, "central square at {0}×{0} px", self.size)?,
            Some(r) => {
                let (short, size, crop_pct, filter) = ((self.size as f64 / r.crop_pct).floor(), self.size, r.crop_pct, r.filter.name());
                write!(f, "shorter side resized to {short} px ({filter}, as Pillow), central {size}×{size} crop (crop_pct {crop_pct})")?
            }
        }
        write!(f, ", normalised with {}: mean [{}], std [{}]", self.normalization, list(&self.mean), list(&self.std))
    }
}

/// The preprocessing weights were trained with, as recorded beside them.
pub struct Trained {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// The side of the square training views, where recorded.
    pub size: Option<usize>,
    /// e.g. "the run's (RUN/augment.toml)".
    pub source: String,
    /// The run's global-view recipe (augment.toml), where the weights come from a run.
    pub global_views: Option<crate::data::augment::ViewRecipe>,
}

/// A frozen backbone ready for a dataset, and the evaluation views that fit it.
pub struct Model {
    pub encoder: Encoder,
    /// The evaluation view: its size, resize and normalisation.
    pub crop: MultiCrop,
    pub device: Device,
    /// Where the normalisation came from (see [`Preprocessing::normalization`]).
    pub normalization: String,
    /// The augmented views fine-tuning trains on (`probe --method finetune`): the run's global views
    /// where the weights come from a run, else the paper's recipe, at the evaluation size.
    pub training_views: crate::data::augment::ViewRecipe,
}

impl Model {
    /// The evaluation views' preprocessing, for printing and for JSON.
    pub fn preprocessing(&self) -> Preprocessing {
        let crop = &self.crop;
        Preprocessing { size: crop.global.size, resize: crop.eval_resize, mean: crop.mean.clone(), std: crop.std.clone(), normalization: self.normalization.clone() }
    }
}

/// What a timm-named backbone file says of its input: channels (first convolution's weight) and,
/// for a ViT, the image size its position embedding was laid out for (grid × patch, class token assumed).
fn weights_input(path: &Path, tensors: &[(String, Tensor)], patch: Option<i64>) -> Result<(i64, Option<i64>)> {
    let shape = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.size());
    let in_chans = shape("patch_embed.proj.weight")
        .or_else(|| shape("conv1.weight"))
        .map(|s| s[1])
        .with_context(|| format!("{}: neither patch_embed.proj.weight nor conv1.weight found (not a timm ViT/ResNet?)", path.display()))?;
    let img_size = match (shape("pos_embed"), patch) {
        (Some(s), Some(patch)) => Some((((s[1] - 1) as f64).sqrt().round() as i64) * patch),
        _ => None,
    };
    Ok((in_chans, img_size))
}

impl ModelArgs {
    /// A run's trained backbone, evaluated as the run was trained.
    pub fn of_run(run: &Path, device: &str) -> ModelArgs {
        ModelArgs { run: Some(run.to_path_buf()), checkpoint: None, arch: None, img_size: None, device: device.to_string(), normalize: None }
    }

    /// The run's config, when --run is given.
    pub fn run_config(&self) -> Result<Option<Config>> {
        let Some(run) = &self.run else { return Ok(None) };
        let path = run.join("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read (is {} a run directory?)", path.display(), run.display()))?;
        Ok(Some(toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?))
    }

    pub fn has_model(&self) -> bool {
        self.run.is_some() || self.checkpoint.is_some()
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match (&self.run, &self.checkpoint) {
            (Some(run), _) => run.display().to_string(),
            (None, Some(path)) => path.display().to_string(),
            _ => "random init".into(),
        }
    }

    /// Builds the backbone: trained weights, or (`random`) the same architecture freshly initialised.
    pub fn load(&self, dataset: &Dataset, random: bool) -> Result<Model> {
        let device = parse_device(&self.device)?;
        let config = self.run_config()?;
        let arch_name = match (&config, &self.arch) {
            (_, Some(arch)) => arch.clone(),
            (Some(c), None) => c.arch.clone(),
            (None, None) => bail!("give --run RUN, or --weights W.safetensors with --arch NAME"),
        };
        let arch = Arch::from_name(&arch_name)?;
        let weights = self.weights_file();
        let patch = match arch {
            Arch::Vit { patch, .. } => Some(patch),
            Arch::Resnet { .. } => None,
        };
        // Read once: the shapes tell channels and trained size, then the values load.
        let weights = weights.map(|path| read_weights(&path).map(|tensors| (path, backbone_part(tensors)))).transpose()?;
        let (in_chans, weights_img_size) = match &weights {
            Some((path, tensors)) => weights_input(path, tensors, patch)?,
            None => (dataset.channels as i64, None),
        };
        ensure!(
            in_chans as usize >= dataset.channels,
            "the backbone takes {in_chans}-channel images but {} has {} channels",
            dataset.spec,
            dataset.channels
        );
        let multiple = patch.unwrap_or(1) as usize;
        let (width, height) = dataset.train.dimensions(0);
        // The size the weights were trained at, whatever data is probed now; else the data's own size.
        let trained = self.trained_preprocessing()?;
        let trained_size = trained.as_ref().and_then(|t| t.size);
        // Weights without statistics of their own for an architecture timm has weights for: fed as timm
        // evaluated those (its resize, crop and normalisation).
        let timm = match (&weights, &trained, in_chans) {
            (Some(_), None, 3) => arch.timm_preprocessing(),
            _ => None,
        };
        let default_size = trained_size
            .or(weights_img_size.map(|s| s as usize))
            .or(timm.as_ref().map(|t| t.input_size))
            .unwrap_or(width.min(height).min(224));
        let size = self.img_size.unwrap_or(default_size);
        let mut crop = MultiCrop::lejepa(size, multiple, 1, 0);
        // Evaluation is not capped at training's 224 px (timm's DINOv2 weights are evaluated at 518).
        crop.global.size = ((size as f64 / multiple as f64).round() as usize).max(1) * multiple;
        crop.eval_resize = timm.as_ref().map(|t| t.resize);
        // Evaluation reads the central square at the view size: files need decoding no larger. timm's
        // resize starts from the whole image, as Pillow decoded it.
        dataset.decode_at(if timm.is_some() { usize::MAX } else { crop.global.size });
        let (mean, std, normalization) = self.normalization(dataset, in_chans, trained.as_ref(), timm.as_ref())?;
        (crop.mean, crop.std) = (mean, std);
        // Evaluation needs the backbone only; the projector (a token one here) is never used.
        // Built at the size its position embedding was trained for; other sizes are interpolated.
        let build_size = weights_img_size.unwrap_or(crop.global.size as i64);
        if random {
            // The random-init baseline is one fixed draw, whatever ran in this process before it
            // (the probes of other sources reseed the generator with their own seeds).
            tch::manual_seed(0);
        }
        let mut encoder = Encoder::new(device, arch, in_chans, build_size, 0.0, &[16])?;
        if let (false, Some((path, tensors))) = (random, weights) {
            encoder.load_backbone_tensors(&path, tensors)?;
        }
        let mut training_views = trained.and_then(|t| t.global_views).unwrap_or_else(|| crop.global.clone());
        training_views.size = crop.global.size;
        Ok(Model { encoder, crop, device, normalization, training_views })
    }

    /// The backbone file: --weights (a file, or a run or exported folder holding one), else the run's.
    pub fn weights_file(&self) -> Option<PathBuf> {
        match (&self.run, &self.checkpoint) {
            (_, Some(path)) if path.is_dir() => {
                ["model.safetensors", "backbone.safetensors"].iter().map(|f| path.join(f)).find(|p| p.exists()).or(Some(path.join("model.safetensors")))
            }
            (_, Some(path)) => Some(path.clone()),
            (Some(run), None) => Some(run.join("backbone.safetensors")),
            (None, None) => None,
        }
    }

    /// What the weights were trained with, where known: the run's augment.toml (--run, or --weights in a run
    /// directory), or a folder written by `lejepa export` (its lejepa.json, else timm's config.json).
    pub fn trained_preprocessing(&self) -> Result<Option<Trained>> {
        let Some(file) = self.weights_file() else { return Ok(None) };
        let folder = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let read = |path: &Path| std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()));
        let augment = folder.join("augment.toml");
        if augment.exists() {
            let crop: MultiCrop = toml::from_str(&read(&augment)?).with_context(|| format!("{}: not a view recipe", augment.display()))?;
            let source = format!("the run's ({})", augment.display());
            let global_views = Some(crop.global.clone());
            return Ok(Some(Trained { mean: crop.mean, std: crop.std, size: Some(crop.global.size), source, global_views }));
        }
        for (name, cfg) in [("lejepa.json", "/"), ("config.json", "/pretrained_cfg")] {
            let path = folder.join(name);
            if !path.exists() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&read(&path)?).with_context(|| format!("{}: not JSON", path.display()))?;
            let cfg = if cfg == "/" { &value } else { value.pointer(cfg).unwrap_or(&serde_json::Value::Null) };
            let list = |key: &str| -> Option<Vec<f32>> { cfg[key].as_array()?.iter().map(|v| v.as_f64().map(|x| x as f32)).collect() };
            let size = cfg["input_size"].as_array().and_then(|s| s.last()?.as_u64()).map(|s| s as usize);
            if let (Some(mean), Some(std)) = (list("mean"), list("std")) {
                return Ok(Some(Trained { mean, std, size, source: format!("the weights' ({})", path.display()), global_views: None }));
            }
        }
        Ok(None)
    }

    /// Mean and std for a model of `in_chans` channels on `dataset`, and where they came from.
    /// `trained` and `timm` are what [`Self::load`] found beside the weights and for the architecture.
    fn normalization(
        &self,
        dataset: &Dataset,
        in_chans: i64,
        trained: Option<&Trained>,
        timm: Option<&TimmPreprocessing>,
    ) -> Result<(Vec<f32>, Vec<f32>, String)> {
        if let (None, Some(timm)) = (&self.normalize, timm) {
            return Ok((timm.mean.clone(), timm.std.clone(), format!("timm's pretrained_cfg for {}", timm.name)));
        }
        let chosen = match &self.normalize {
            Some(choice) => choice.clone(),
            None if trained.is_some() => Normalize::Run,
            None if self.has_model() && in_chans == 3 => Normalize::Imagenet,
            None => Normalize::Data,
        };
        let (mean, std, source) = match chosen {
            Normalize::Run => {
                let trained = trained.context(
                    "--normalize run: no statistics found (neither a run's augment.toml nor an exported folder's lejepa.json beside the weights)",
                )?;
                (trained.mean.clone(), trained.std.clone(), trained.source.clone())
            }
            Normalize::Imagenet => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec(), "ImageNet's".to_string()),
            Normalize::Data => {
                let (mean, std) = channel_stats(&dataset.train, dataset.channels)?;
                (mean, std, format!("the data's ({})", dataset.spec))
            }
            Normalize::Values { mean, std } => (mean, std, "the given values".to_string()),
        };
        match (mean.len() as i64, in_chans) {
            (n, c) if n == c => Ok((mean, std, source)),
            // One gray statistic for an RGB model: the channel is replicated, so is its normalisation.
            (1, 3) => Ok((vec![mean[0]; 3], vec![std[0]; 3], source)),
            (n, c) => bail!("{source} normalisation has {n} channel(s) but the model takes {c}: give --normalize data or MEAN,STD"),
        }
    }

    /// The run whose checkpoint holds the projector: --run without --weights, else an error saying so.
    pub fn projector_run(&self) -> Result<&Path> {
        match (&self.run, &self.checkpoint) {
            (Some(run), None) => Ok(run),
            _ => bail!("the projector is saved in a run's checkpoint.safetensors: give --run RUN (and no --weights)"),
        }
    }

    /// The run's trained projector (from its checkpoint.safetensors: a backbone file does not hold
    /// one), which maps the backbone's embedding of `in_dim` to the space SIGReg makes Gaussian.
    pub fn trained_projector(&self, in_dim: i64, device: Device) -> Result<Projector> {
        let run = self.projector_run()?;
        let config = self.run_config()?.context("--run gives a config")?;
        let mut vs = nn::VarStore::new(Device::Cpu);
        let projector = Projector::new(&(vs.root() / "projector"), in_dim, config.embedding_dim, &config.projector)?;
        let path = run.join("checkpoint.safetensors");
        let tensors = read_weights(&path)?.into_iter().collect();
        copy_variables(&vs, "", &tensors, &path)?;
        vs.set_device(device);
        Ok(projector)
    }
}

/// The backbone's tensors under timm's names: a run's checkpoint.safetensors holds them under
/// `backbone.` beside the projector, the probe and the optimizer state; a backbone file holds only them.
fn backbone_part(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    if !tensors.iter().any(|(name, _)| name.starts_with("backbone.")) {
        return tensors;
    }
    tensors.into_iter().filter_map(|(name, t)| name.strip_prefix("backbone.").map(|n| (n.to_string(), t))).collect()
}

/// The split read with gray images turned RGB when the model takes 3 channels.
pub fn fit_channels(split: &Split, model: &Model) -> Split {
    if model.crop.mean.len() == 3 { split.as_rgb() } else { split.clone() }
}

#[cfg(test)]
mod tests {
    use super::Normalize;

    #[test]
    fn normalize_values_are_a_mean_and_std_pair_or_three_of_each() {
        assert_eq!("imagenet".parse::<Normalize>(), Ok(Normalize::Imagenet));
        assert_eq!("0.5,0.25".parse::<Normalize>(), Ok(Normalize::Values { mean: vec![0.5], std: vec![0.25] }));
        assert_eq!(
            "0.1,0.2,0.3,0.4,0.5,0.6".parse::<Normalize>(),
            Ok(Normalize::Values { mean: vec![0.1, 0.2, 0.3], std: vec![0.4, 0.5, 0.6] })
        );
        for bad in ["0.5", "0.5,0.25,0.1", "0.5,0", "0.5,-1", "mean"] {
            assert!(bad.parse::<Normalize>().is_err(), "{bad}");
        }
    }
}
