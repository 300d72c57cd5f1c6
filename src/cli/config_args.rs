//! The pretraining flags: one per configuration key, laid over the preset and the `--config` file
//! (`lejepa pretrain`, `views`, `sweep` share them).

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::data_args::DataArgs;
use crate::data::Dataset;
use crate::train::config::{Augment, ComputeDevice, Config, Flip, Precision, crop_reason, crop_scales_for};

/// Flags for every field; each one, when given, overrides the preset and the file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// Preset to start from: default (a half-width ResNet-18 for 480 steps, then the probe with baselines: about 20 minutes
    /// on 2 cores), cpu-small (a ViT-tiny for one epoch), cpu-hour (cpu-small in bf16 for 6 epochs), cpu-hour-resnet
    /// (a ResNet-18 for 850 steps), minimal (MINIMAL.md), paper (§6.1). `--print-config` shows every value.
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// TOML file with any subset of the config keys (docs/configuration.md), laid over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Backbone, e.g. vit-tiny-patch4-depth6, vit-small-patch16, resnet18-small, resnet50 (docs/configuration.md lists all).
    #[arg(long)]
    pub arch: Option<String>,
    /// Projector widths, comma-separated (e.g. 2048,2048,64).
    #[arg(long, value_delimiter = ',')]
    pub projector: Option<Vec<i64>>,
    /// A linear embedding layer of this width between backbone and projector, as the official recipes' 512 (0: none).
    #[arg(long)]
    pub embedding_dim: Option<i64>,
    /// Passes over the training images; the warm-up + cosine learning-rate schedule spans them.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps (the schedule still spans --epochs or --steps).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Length of the schedule in optimizer steps, instead of --epochs (giving --epochs clears a preset's steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step on each process (per micro-batch with --grad-accum).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (effective batch = batch size × this).
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak AdamW learning rate, reached after the warm-up.
    #[arg(long)]
    pub lr: Option<f64>,
    /// The cosine schedule ends at lr × this.
    #[arg(long)]
    pub final_lr_ratio: Option<f64>,
    /// Linear warm-up length, in epochs (fractions allowed).
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Linear warm-up length in optimizer steps, instead of --warmup-epochs.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// λ, the trade-off between invariance and SIGReg.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// SIGReg: random unit directions drawn each step (M).
    #[arg(long)]
    pub slices: Option<i64>,
    /// SIGReg: the Epps–Pulley integral runs over t ∈ [0, t_max].
    #[arg(long)]
    pub t_max: Option<f64>,
    /// SIGReg: trapezoid knots on [0, t_max] (17 in the paper).
    #[arg(long)]
    pub knots: Option<usize>,
    /// Stochastic depth rate of the backbone's last residual branch (linearly less in earlier ones).
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// View recipe: lejepa (global 0.3–1 + local 0.05–0.3 crops) or minimal (MINIMAL.md).
    #[arg(long, value_enum)]
    pub augment: Option<Augment>,
    /// Global views per image (V_g); the invariance target is their mean.
    #[arg(long)]
    pub global_views: Option<usize>,
    /// Local (small) views per image (V_l).
    #[arg(long)]
    pub local_views: Option<usize>,
    /// Global view size in pixels (default: the image size, at most 224; the default preset fits it to larger images, docs/configuration.md).
    #[arg(long)]
    pub global_size: Option<usize>,
    /// Local view size in pixels (default: 3/7 of the global size).
    #[arg(long)]
    pub local_size: Option<usize>,
    /// Global views' crop scale, fractions of the image's area as LOW,HIGH (default: the preset's; the recipe's 0.3,1 where it sets none)
    #[arg(long, value_name = "LOW,HIGH", value_parser = parse_scale)]
    pub global_scale: Option<[f64; 2]>,
    /// Local views' crop scale, fractions of the image's area as LOW,HIGH (default: the preset's; the recipe's 0.05,0.3 where it sets none)
    #[arg(long, value_name = "LOW,HIGH", value_parser = parse_scale)]
    pub local_scale: Option<[f64; 2]>,
    /// Flips for your domain: none (digits, text), h (photos; the paper's), hv (cells, tissue, satellite, sky).
    #[arg(long, value_enum)]
    pub flip: Option<Flip>,
    /// No solarization (where brightness is the signal, e.g. electroluminescence images of defects).
    #[arg(long)]
    pub no_solarize: bool,
    /// Colour jitter strength: 1 the paper's (brightness and contrast ±40%), 0.5 half of it, 0 none.
    #[arg(long)]
    pub jitter: Option<f64>,
    /// A complete view recipe in the format of a run's augment.toml.
    #[arg(long)]
    pub augment_file: Option<PathBuf>,
    /// Seed of initialisation, views and SIGReg directions.
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    pub device: Option<ComputeDevice>,
    /// f32, bf16 (autocast; fast only on CPUs with bf16 units and on GPUs) or f64 (for exactness checks).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Data-loading threads (decoding and augmentation).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Turn the online linear probe off.
    #[arg(long)]
    pub no_online_probe: bool,
    /// Distributed runs: normalise BatchNorm with each process's own shard instead of the global batch.
    #[arg(long)]
    pub no_sync_batch_norm: bool,
    /// Online linear probe: AdamW learning rate.
    #[arg(long)]
    pub probe_lr: Option<f64>,
    /// Online linear probe: AdamW weight decay.
    #[arg(long)]
    pub probe_weight_decay: Option<f64>,
    /// Evaluate the online probe (and the final probe) on at most this many test images.
    #[arg(long)]
    pub eval_images: Option<usize>,
    /// After training, probe the backbone, raw pixels and random init fitted on this many training images (0: no final probe).
    #[arg(long, value_name = "IMAGES")]
    pub final_probe_images: Option<usize>,
    /// Write a checkpoint every this many steps (and at the end).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Keep the backbone of every checkpoint (backbone-step<N>.safetensors).
    #[arg(long)]
    pub keep_backbones: bool,
}

/// A crop scale flag's "LOW,HIGH" (the range itself is checked with the rest of the config, in `validate`).
fn parse_scale(text: &str) -> Result<[f64; 2], String> {
    let fractions: Vec<f64> = text.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<_, _>>().map_err(|e| format!("{e}"))?;
    match fractions[..] {
        [low, high] => Ok([low, high]),
        _ => Err(format!("takes two fractions, LOW,HIGH (e.g. 0.6,1), got {} value(s)", fractions.len())),
    }
}

impl ConfigArgs {
    /// Preset, then file, then flags.
    pub fn resolve(&self) -> Result<Config> {
        self.resolve_over(self.fresh(Config::from_preset_and_file(&self.preset, self.config.as_deref())?))
    }

    /// A new run's preset (and file) with what the flags replace by another name cleared (`Config::clear_replaced`).
    /// (A resumed run keeps its own: see `resolve_over`.)
    fn fresh(&self, mut c: Config) -> Config {
        c.clear_replaced(|key| match key {
            "epochs" => self.epochs.is_some(),
            "steps" => self.steps.is_some(),
            "warmup_epochs" => self.warmup_epochs.is_some(),
            "warmup_steps" => self.warmup_steps.is_some(),
            "augment_file" => self.augment_file.is_some(),
            _ => false,
        });
        c
    }

    /// Preset (fitted to the data when it is the default: `Config::adapted_to`), then file, then flags,
    /// with the reasons for the fitted choices that no file or flag overrode.
    pub fn resolve_for(&self, dataset: &Dataset) -> Result<(Config, Vec<String>)> {
        let given = self.resolve()?;
        let mut preset = Config::preset(&self.preset)?;
        if self.preset != "default" {
            return Ok((given, Vec::new()));
        }
        preset.device = given.device;
        let (adapted, mut reasons) = preset.adapted_to(dataset);
        let mut config = self.resolve_over(self.fresh(Config::layered(adapted.clone(), self.config.as_deref())?))?;
        if self.global_size.is_some() && self.local_size.is_none() && config.local_size == adapted.local_size {
            config.local_size = None; // a global size given alone: the local views are 3/7 of it, as documented
        }
        let scales_left_alone = (config.global_scale, config.local_scale) == (adapted.global_scale, adapted.local_scale);
        if let (Some(size), Some(chosen), 2) = (config.global_size, adapted.global_size, reasons.len()) {
            if size != chosen && scales_left_alone {
                // Another view size given: the crops follow it by the same rule.
                let (global, local) = crop_scales_for(size);
                (config.global_scale, config.local_scale) = (Some(global), Some(local));
                reasons[1] = crop_reason(size);
                config.validate()?;
            }
        }
        // A reason stands only where the file and flags left its choice alone: the first is the backbone's and
        // the view sizes', the second (CPU) the crops'.
        let kept = [
            (config.arch.as_str(), config.global_size, config.local_size, config.precision)
                == (adapted.arch.as_str(), adapted.global_size, adapted.local_size, adapted.precision),
            scales_left_alone,
        ];
        let reasons = reasons.into_iter().zip(kept).filter(|(_, kept)| *kept).map(|(reason, _)| reason).collect();
        Ok((config, reasons))
    }

    /// The given flags laid over `c` (a resumed run's saved config, or preset + file).
    pub fn resolve_over(&self, mut c: Config) -> Result<Config> {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone(); } )* };
        }
        set!(arch, projector, epochs, batch_size, grad_accum, lr, final_lr_ratio, warmup_epochs, weight_decay,
             lambda, slices, t_max, knots, drop_path, augment, global_views, local_views, seed, device, precision,
             workers, checkpoint_every, probe_lr, probe_weight_decay, flip, jitter);
        macro_rules! set_option {
            ($($field:ident),*) => { $( if self.$field.is_some() { c.$field = self.$field.clone(); } )* };
        }
        if let Some(images) = self.final_probe_images {
            c.final_probe_images = (images > 0).then_some(images);
        }
        if let Some(dim) = self.embedding_dim {
            c.embedding_dim = (dim != 0).then_some(dim);
        }
        set_option!(max_steps, steps, warmup_steps, global_size, local_size, global_scale, local_scale, augment_file, threads, eval_images);
        if let Some(spec) = &self.data.data {
            c.data = spec.clone();
        }
        if self.no_online_probe {
            c.online_probe = false;
        }
        if self.no_sync_batch_norm {
            c.sync_batch_norm = false;
        }
        if self.keep_backbones {
            c.keep_backbones = true;
        }
        if self.no_solarize {
            c.solarize = false;
        }
        c.validate()?;
        Ok(c)
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn resolve(flags: &[&str]) -> Result<Config> {
        use clap::Parser;
        Flags::try_parse_from(std::iter::once("lejepa").chain(flags.iter().copied()))?.config.resolve()
    }

    /// --global-scale and --local-scale reach the views: the recipe carries them, and the crops drawn from it cover
    /// between LOW and HIGH of the image's area (up to the rounding of a 28 px crop's sides).
    #[test]
    fn crop_scale_flags_set_the_crops_drawn() {
        use rand::SeedableRng;
        let config = resolve(&["--global-scale", "0.6,1", "--local-scale", "0.2,0.4"]).unwrap();
        let dataset = crate::data::open("digits", &Default::default()).unwrap();
        let crop = config.multicrop(&dataset).unwrap();
        assert_eq!((crop.global.scale, crop.local.scale), ([0.6, 1.0], [0.2, 0.4]));
        let default = resolve(&["--preset", "cpu-small"]).unwrap().multicrop(&dataset).unwrap();
        assert_eq!((default.global.scale, default.local.scale), ([0.3, 1.0], [0.05, 0.3]), "the recipe's own, where no preset sets them");

        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for recipe in [&crop.global, &crop.local] {
            let areas: Vec<f64> = (0..2000)
                .map(|_| {
                    let (_, _, h, w) = crate::data::augment::crop_box(28, 28, recipe.scale, recipe.ratio, &mut rng);
                    (h * w) as f64 / (28.0 * 28.0)
                })
                .collect();
            let (low, high) = areas.iter().fold((1.0f64, 0.0f64), |(l, h), &a| (l.min(a), h.max(a)));
            assert!(low >= recipe.scale[0] - 0.03 && high <= recipe.scale[1] + 0.03, "{:?}: areas {low}–{high}", recipe.scale);
            assert!(low < recipe.scale[0] + 0.05 && high > recipe.scale[1] - 0.05, "{:?}: areas {low}–{high} do not span the range", recipe.scale);
        }

        let error = resolve(&["--local-scale", "0.4,0.2"]).unwrap_err().to_string();
        assert!(error.contains("local_scale") && error.contains("0.4"), "{error}");
        assert!(resolve(&["--global-scale", "0.5"]).is_err(), "one fraction alone is refused");
        let error = resolve(&["--global-scale", "0.5,1", "--augment-file", "recipe.toml"]).unwrap_err().to_string();
        assert!(error.contains("augment_file"), "{error}");
    }

    /// Flags that name another way to set a preset's value replace it: --epochs a step-counted
    /// schedule, --augment-file the preset's crop scales.
    #[test]
    fn epochs_and_recipe_files_replace_what_the_preset_set_otherwise() {
        let args = ConfigArgs { preset: "default".into(), epochs: Some(2), ..Default::default() };
        let config = args.resolve().unwrap();
        assert_eq!((config.epochs, config.steps, config.warmup_steps), (2, None, None));
        let args = ConfigArgs { preset: "default".into(), epochs: Some(2), steps: Some(30), ..Default::default() };
        assert_eq!(args.resolve().unwrap().steps, Some(30));
        let args = ConfigArgs { preset: "default".into(), augment_file: Some("augment.toml".into()), ..Default::default() };
        let config = args.resolve().unwrap();
        assert_eq!((config.global_scale, config.local_scale), (None, None));
        let args = ConfigArgs { preset: "default".into(), final_probe_images: Some(0), ..Default::default() };
        assert_eq!(args.resolve().unwrap().final_probe_images, None);
        // The same keys in a --config file replace the same way.
        let file = std::env::temp_dir().join(format!("lejepa-config-test-{}.toml", std::process::id()));
        std::fs::write(&file, "epochs = 2\n").unwrap();
        let args = ConfigArgs { preset: "default".into(), config: Some(file.clone()), ..Default::default() };
        let config = args.resolve();
        std::fs::remove_file(&file).unwrap();
        let config = config.unwrap();
        assert_eq!((config.epochs, config.steps, config.warmup_steps), (2, None, None));
    }

    /// On larger images the default is fitted (96-px views on a CPU); a global size given alone takes local
    /// views of 3/7 of it and crops by the same rule, as for any other preset.
    #[test]
    fn a_global_size_given_alone_sets_the_local_size_of_the_fitted_default() {
        let image = || crate::data::Image { width: 300, height: 300, channels: 1, pixels: vec![0; 300 * 300] };
        let train = crate::data::Split::from_images((0..3).map(|_| image()).collect(), None);
        let dataset = Dataset {
            spec: "300px".into(), channels: 1, classes: Vec::new(), train: std::sync::Arc::new(train),
            val: Default::default(), test: Default::default(), skipped: Vec::new(),
        };
        let fitted = |flags: &[&str]| {
            use clap::Parser;
            let args = Flags::try_parse_from(std::iter::once("lejepa").chain(flags.iter().copied())).unwrap().config;
            let (config, _) = args.resolve_for(&dataset).unwrap();
            config.multicrop(&dataset).unwrap()
        };
        let default = fitted(&[]);
        assert_eq!((default.global.size, default.local.size), (96, crate::data::augment::local_size_for(96, 1)));
        let larger = fitted(&["--global-size", "128"]);
        assert_eq!((larger.global.size, larger.local.size), (128, crate::data::augment::local_size_for(128, 1)));
        assert_eq!(larger.local.size, 55, "3/7 of 128");
        let (global, local) = crate::train::config::crop_scales_for(128);
        assert_eq!((larger.global.scale, larger.local.scale), (global, local));
        let both = fitted(&["--global-size", "128", "--local-size", "48"]);
        assert_eq!(both.local.size, 48);
    }

    /// The domain switches reach both view recipes; on gray images the recipe says that saturation, hue and
    /// grayscale do nothing; a recipe file cannot be combined with them.
    #[test]
    fn domain_switches_set_the_view_recipes() {
        let dataset = crate::data::open("digits", &Default::default()).unwrap();
        let default = resolve(&["--preset", "cpu-small"]).unwrap().multicrop(&dataset).unwrap();
        assert_eq!((default.global.flip_p, default.global.vflip_p, default.global.solarize_p, default.global.brightness), (0.5, 0.0, 0.2, 0.4));
        assert_eq!((default.global.saturation, default.global.hue, default.global.grayscale_p), (0.0, 0.0, 0.0), "gray images");
        let config = resolve(&["--preset", "cpu-small", "--flip", "hv", "--no-solarize", "--jitter", "0.5"]).unwrap();
        let crop = config.multicrop(&dataset).unwrap();
        for recipe in [&crop.global, &crop.local] {
            assert_eq!((recipe.flip_p, recipe.vflip_p, recipe.solarize_p), (0.5, 0.5, 0.0));
            assert_eq!((recipe.brightness, recipe.contrast), (0.2, 0.2));
        }
        let none = resolve(&["--flip", "none"]).unwrap().multicrop(&dataset).unwrap();
        assert_eq!((none.global.flip_p, none.local.vflip_p), (0.0, 0.0));
        let error = resolve(&["--no-solarize", "--augment-file", "recipe.toml"]).unwrap_err().to_string();
        assert!(error.contains("augment_file"), "{error}");
        assert!(resolve(&["--jitter", "3"]).is_err());
    }
}
