//! Which frozen backbone an evaluation command uses: a pretraining run, or any safetensors file
//! with timm's names (from lejepa or from timm, e.g. a model a user brings) with its architecture.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use tch::{Device, Tensor, nn};

use crate::data::augment::MultiCrop;
use crate::data::{Dataset, Split, channel_stats};
use crate::models::{Arch, Encoder, Projector, copy_variables, read_weights};
use crate::train::config::Config;
use crate::train::parse_device;

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A pretraining run directory (uses its config.toml and backbone.safetensors).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Backbone weights with timm's parameter names: a run's backbone.safetensors (or its
    /// checkpoint.safetensors, whose backbone part is read) or a timm model's. Alias: --checkpoint.
    #[arg(long = "weights", visible_alias = "checkpoint", value_name = "FILE", requires = "arch")]
    pub checkpoint: Option<PathBuf>,
    /// Architecture of --weights, e.g. vit-small-patch16 or resnet50 (timm's configurations).
    #[arg(long)]
    pub arch: Option<String>,
    /// Evaluation image size (default: the run's global view size, else the data's image size).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A frozen backbone ready for a dataset, and the evaluation views that fit it.
pub struct Model {
    pub encoder: Encoder,
    pub crop: MultiCrop,
    pub device: Device,
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
        let weights = match (&self.run, &self.checkpoint) {
            (_, Some(path)) => Some(path.clone()),
            (Some(run), None) => Some(run.join("backbone.safetensors")),
            (None, None) => None,
        };
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
        // The size the run was trained at (its global views), whatever data is probed now;
        // else the data's own size.
        let trained_size = self.run.as_ref().and_then(|run| {
            let text = std::fs::read_to_string(run.join("augment.toml")).ok()?;
            Some(toml::from_str::<MultiCrop>(&text).ok()?.global.size)
        });
        let default_size = trained_size
            .or(weights_img_size.map(|s| s as usize))
            .unwrap_or(width.min(height).min(224));
        let mut crop = MultiCrop::lejepa(self.img_size.unwrap_or(default_size), multiple, 1, 0);
        // Evaluation reads the central square at the view size: files need decoding no larger.
        dataset.decode_at(crop.global.size);
        (crop.mean, crop.std) = channel_stats(&dataset.train, dataset.channels)?;
        if in_chans == 3 && dataset.channels == 1 {
            // Gray data through an RGB model: the channel is replicated, so is its normalisation.
            crop.mean = vec![crop.mean[0]; 3];
            crop.std = vec![crop.std[0]; 3];
        }
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
        Ok(Model { encoder, crop, device })
    }

    /// The run's trained projector (from its checkpoint.safetensors: a backbone file does not hold
    /// one), which maps the backbone's embedding of `in_dim` to the space SIGReg makes Gaussian.
    pub fn trained_projector(&self, in_dim: i64, device: Device) -> Result<Projector> {
        let (Some(run), None) = (&self.run, &self.checkpoint) else {
            bail!("the projector is saved in a run's checkpoint.safetensors: give --run RUN (and no --weights)")
        };
        let config = self.run_config()?.context("--run gives a config")?;
        let mut vs = nn::VarStore::new(Device::Cpu);
        let projector = Projector::new(&(vs.root() / "projector"), in_dim, &config.projector)?;
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
