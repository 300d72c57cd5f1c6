//! A backbone as a model folder in the layout timm and the Hugging Face hub read: `model.safetensors`
//! (timm's parameter names), `config.json` (architecture, constructor arguments, preprocessing), a
//! `README.md` model card, and `lejepa.json` (architecture and preprocessing, for lejepa to read back). `timm.create_model("local-dir:DIR", pretrained=True)` loads it; uploaded to
//! a hub repository, `hf-hub:USER/REPO` does.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tch::{Device, Tensor};

use crate::data::pil::TimmResize;
use crate::models::Arch;

/// What the folder says about the network and its input.
pub struct ModelFolder {
    pub arch: Arch,
    /// The name lejepa knows the architecture by (e.g. `resnet18-small-w32`).
    pub arch_name: String,
    pub in_chans: i64,
    /// The side of the square images the network was trained on.
    pub img_size: i64,
    /// Per-channel normalisation of images in [0, 1] (one value per input channel).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// How an image becomes the square input: None for lejepa's (the central square, resized with an
    /// antialiased bilinear filter), else timm's resize of the shorter side and centre crop.
    pub resize: Option<TimmResize>,
    /// `[B, D]` embedding width (timm's `num_features`).
    pub num_features: i64,
    /// Markdown lines about where the weights come from (data, recipe, results), for the model card.
    pub provenance: Vec<String>,
}

/// timm's name and constructor arguments for this network, where timm can build it from a config alone.
/// A ViT always can; a ResNet only with the ImageNet stem at the standard width (timm has no option for
/// a 3×3 stride-1 stem without max-pool, nor for a stem narrower than 64 channels).
pub fn timm_architecture(arch: &Arch, in_chans: i64, img_size: i64) -> Option<(String, Value)> {
    match *arch {
        Arch::Vit { width, depth, patch, layer_scale, .. } => {
            let size = match width {
                192 => "tiny",
                384 => "small",
                _ => "base",
            };
            let name = if layer_scale { format!("vit_{size}_patch14_dinov2") } else { format!("vit_{size}_patch16_224") };
            Some((name, json!({ "patch_size": patch, "depth": depth, "img_size": img_size, "in_chans": in_chans })))
        }
        Arch::Resnet { depth, small_stem: false, width: 64, .. } => Some((format!("resnet{depth}"), json!({ "in_chans": in_chans }))),
        Arch::Resnet { .. } => None,
    }
}

impl ModelFolder {
    /// timm's `config.json`, or None where timm cannot build the architecture from a config.
    pub fn timm_config(&self) -> Option<Value> {
        let (architecture, model_args) = timm_architecture(&self.arch, self.in_chans, self.img_size)?;
        let (first_conv, classifier) = match self.arch {
            Arch::Vit { .. } => ("patch_embed.proj", "head"),
            Arch::Resnet { .. } => ("conv1", "fc"),
        };
        Some(json!({
            "architecture": architecture,
            "num_classes": 0,
            "num_features": self.num_features,
            "model_args": model_args,
            "pretrained_cfg": {
                "tag": "lejepa",
                "input_size": [self.in_chans, self.img_size, self.img_size],
                "interpolation": self.resize.map_or("bilinear", |r| r.filter.name()),
                "crop_pct": self.resize.map_or(1.0, |r| r.crop_pct),
                "crop_mode": "center",
                "mean": self.mean,
                "std": self.std,
                "num_classes": 0,
                "first_conv": first_conv,
                "classifier": classifier,
            },
        }))
    }

    /// Python that builds the network and loads `model.safetensors` from the folder `dir_name`.
    pub fn python_loader(&self, dir_name: &str) -> String {
        if self.timm_config().is_some() {
            return format!(
                "import timm\nmodel = timm.create_model(\"local-dir:{dir_name}\", pretrained=True, num_classes=0).eval()\n\
                 config = timm.data.resolve_data_config(model=model)  # the input size, mean and std it was trained with\n\
                 transform = timm.data.create_transform(**config)"
            );
        }
        format!(
            "import timm, torch\nfrom safetensors.torch import load_file\n{}\nmodel.load_state_dict(load_file(\"{dir_name}/model.safetensors\"), strict=True)\nmodel.eval()",
            self.arch.timm_python(self.in_chans, self.img_size)
        )
    }

    /// The model card: what the network is, how it was trained, how to load and feed it.
    pub fn card(&self, dir_name: &str) -> String {
        let mut lines = vec![
            "---".to_string(),
            "library_name: timm".to_string(),
            "tags: [image-feature-extraction, lejepa, self-supervised]".to_string(),
            "---".to_string(),
            format!("# {} pretrained with LeJEPA", self.arch_name),
            String::new(),
            format!(
                "An image encoder trained without labels by LeJEPA (Balestriero & LeCun 2025, arXiv 2511.08544) with \
                 lejepa. It maps a {}×{} image with {} channel(s) to a {}-d embedding.",
                self.img_size, self.img_size, self.in_chans, self.num_features
            ),
            String::new(),
            "## Training".to_string(),
            String::new(),
        ];
        lines.extend(self.provenance.iter().map(|l| format!("- {l}")));
        lines.extend([
            String::new(),
            "## Preprocessing".to_string(),
            String::new(),
            match self.resize {
                None => format!(
                    "The central square of the image, resized to {0}×{0} (antialiased bilinear), scaled to [0, 1], then per \
                     channel (x − mean) / std with mean = {1:?}, std = {2:?}.",
                    self.img_size, self.mean, self.std
                ),
                Some(r) => {
                    let (short, size, filter, mean, std) = ((self.img_size as f64 / r.crop_pct).floor(), self.img_size, r.filter, &self.mean, &self.std);
                    format!(
                        "timm's evaluation transform: the shorter side resized to {short} ({filter:?}), the central {size}×{size} crop, \
                         scaled to [0, 1], then per channel (x − mean) / std with mean = {mean:?}, std = {std:?}."
                    )
                }
            },
            String::new(),
            "## Use".to_string(),
            String::new(),
            "```python".to_string(),
            self.python_loader(dir_name),
            {
                let (c, size, d) = (self.in_chans, self.img_size, self.num_features);
                let hint = if c == 1 { " (one channel: open images with PIL's .convert(\"L\"))" } else { "" };
                format!("features = model(images)  # [B, {c}, {size}, {size}] preprocessed as above -> [B, {d}]{hint}")
            },
            "```".to_string(),
            String::new(),
        ]);
        if self.timm_config().is_some() {
            lines.push(
                "Uploaded to a Hugging Face hub repository (`model.safetensors`, `config.json`, this card), the same model loads \
                 with `timm.create_model(\"hf-hub:USER/REPO\", pretrained=True, num_classes=0)`."
                    .to_string(),
            );
        } else {
            lines.push(format!(
                "timm has no configuration for {}'s stem, so `config.json` is not written and `local-dir:`/`hf-hub:` cannot build \
                 it: the lines above build it from timm's ResNet and load the weights strictly.",
                self.arch_name
            ));
        }
        lines.push(String::new());
        lines.join("\n")
    }

    /// Writes the folder: the weights, the config where timm can use one, and the card. Each file is
    /// written under a temporary name and renamed, so a folder never holds half a file.
    pub fn write(&self, dir: &Path, state: &[(String, Tensor)]) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the folder", dir.display()))?;
        let state: Vec<(String, Tensor)> = state.iter().map(|(n, t)| (n.clone(), t.to_device(Device::Cpu).contiguous())).collect();
        let weights = dir.join("model.safetensors");
        let tmp = dir.join("model.safetensors.tmp");
        Tensor::write_safetensors(&state, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &weights).with_context(|| format!("renaming {} to {}", tmp.display(), weights.display()))?;
        let config = dir.join("config.json");
        match self.timm_config() {
            Some(value) => write_atomically(&config, &serde_json::to_string_pretty(&value)?)?,
            // A config from an earlier export of another architecture would describe the wrong network.
            None if config.exists() => std::fs::remove_file(&config).with_context(|| format!("removing {}", config.display()))?,
            None => {}
        }
        // What lejepa reads back (`--weights DIR`) for every architecture, timm-configurable or not.
        let own = json!({"arch": self.arch_name, "in_chans": self.in_chans, "input_size": [self.in_chans, self.img_size, self.img_size],
                         "mean": self.mean, "std": self.std, "resize": self.resize});
        write_atomically(&dir.join("lejepa.json"), &serde_json::to_string_pretty(&own)?)?;
        let dir_name = dir.file_name().map_or("DIR".to_string(), |n| n.to_string_lossy().to_string());
        write_atomically(&dir.join("README.md"), &self.card(&dir_name))
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(arch: &str) -> ModelFolder {
        ModelFolder {
            arch: Arch::from_name(arch).unwrap(),
            arch_name: arch.into(),
            in_chans: 1,
            img_size: 28,
            mean: vec![0.3],
            std: vec![0.4],
            resize: None,
            num_features: 192,
            provenance: vec!["data: digits".into()],
        }
    }

    #[test]
    fn timm_builds_vits_and_imagenet_stem_resnets_from_a_config_only() {
        let vit = folder("vit-tiny-patch4-depth6").timm_config().unwrap();
        assert_eq!(vit["architecture"], "vit_tiny_patch16_224");
        assert_eq!(vit["model_args"], json!({"patch_size": 4, "depth": 6, "img_size": 28, "in_chans": 1}));
        assert_eq!(vit["pretrained_cfg"]["input_size"], json!([1, 28, 28]));
        assert_eq!(folder("vit-small-patch14-dinov2").timm_config().unwrap()["architecture"], "vit_small_patch14_dinov2");
        assert_eq!(folder("resnet50").timm_config().unwrap()["architecture"], "resnet50");
        for arch in ["resnet18-small", "resnet18-w32", "resnet18-small-w32"] {
            let folder = folder(arch);
            assert!(folder.timm_config().is_none(), "{arch}");
            assert!(folder.card("out").contains("model.load_state_dict"), "{arch}: the card says how to build it");
        }
    }
}
