//! Backbones (ViT, ResNet) and the projector, chosen by name. Variable paths are timm's parameter
//! names (under `backbone.`), so weights move between lejepa and PyTorch without a renaming table.

pub mod resnet;
pub mod vit;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::data::pil::{Filter, TimmResize};
use crate::distributed::{ProcessGroup, sync_batch_norm};

use resnet::{ResNet, ResNetConfig};
use vit::{Vit, VitConfig};

/// What a backbone returns for a batch of images.
pub struct Features {
    /// `[B, D]`: timm's pooled output with num_classes=0 (ViT: final-norm class token; ResNet: average pool).
    pub embedding: Tensor,
    /// `[B, D']`: what the linear probe reads, the paper's protocol: the last two blocks' outputs,
    /// concatenated (ViT: their class tokens; ResNet: their outputs, average-pooled).
    pub probe: Tensor,
}

/// An architecture by name, before the data fixes its channels and image size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "kebab-case")]
pub enum Arch {
    /// `layer_scale`: DINOv2's per-channel scaling of each residual branch (timm's `ls1`/`ls2`).
    Vit { width: i64, depth: i64, heads: i64, patch: i64, #[serde(default)] layer_scale: bool },
    /// `stem_stride`: 1, or 2 for `-small-stride2` (the small stem at a quarter of the first stage's cost);
    /// `width`: the first stage's channels, 64 unless `-wN` (e.g. `resnet18-small-w32`: a quarter of the FLOPs).
    Resnet {
        depth: i64,
        small_stem: bool,
        #[serde(default = "one")]
        stem_stride: i64,
        #[serde(default = "sixty_four")]
        width: i64,
    },
}

fn one() -> i64 {
    1
}

fn sixty_four() -> i64 {
    64
}

pub const KNOWN_ARCHS: &str = "vit-tiny, vit-small, vit-base (optionally -patchP with P in 4, 8, 14, 16, -depthD, \
and -dinov2 for DINOv2's LayerScale, e.g. vit-small-patch16, vit-tiny-patch4-depth6, vit-small-patch14-dinov2), resnet18, resnet34, resnet50 (ImageNet stem), \
resnet18-small, resnet34-small, resnet50-small (3×3 stem without max-pool, for 28–96 px images; \
-small-stride2 for the same stem at stride 2; -wN for N channels in the first stage instead of 64, e.g. resnet18-small-w32)";

impl Arch {
    /// Parses `vit-{tiny,small,base}[-patchP][-depthD][-dinov2]` and `resnet{18,34,50}[-small[-stride2]][-wN]`.
    pub fn from_name(name: &str) -> Result<Arch> {
        let unknown = || anyhow::anyhow!("unknown architecture '{name}'; known: {KNOWN_ARCHS}");
        if let Some(rest) = name.strip_prefix("resnet") {
            let (rest, width) = match rest.rsplit_once("-w") {
                Some((rest, width)) => (rest, width.parse::<i64>().ok().filter(|w| (8..=256).contains(w) && w % 8 == 0).ok_or_else(unknown)?),
                None => (rest, 64),
            };
            let (depth, small_stem, stem_stride) = if let Some(depth) = rest.strip_suffix("-small-stride2") {
                (depth, true, 2)
            } else if let Some(depth) = rest.strip_suffix("-small") {
                (depth, true, 1)
            } else {
                (rest, false, 1)
            };
            let depth: i64 = depth.parse().map_err(|_| unknown())?;
            ensure!([18, 34, 50].contains(&depth), unknown());
            return Ok(Arch::Resnet { depth, small_stem, stem_stride, width });
        }
        let mut parts = name.split('-');
        if parts.next() != Some("vit") {
            return Err(unknown());
        }
        let (width, heads) = match parts.next() {
            Some("tiny") => (192, 3),
            Some("small") => (384, 6),
            Some("base") => (768, 12),
            _ => return Err(unknown()),
        };
        let (mut patch, mut depth, mut layer_scale) = (16, 12, false);
        for part in parts {
            if part == "dinov2" {
                layer_scale = true;
            } else if let Some(p) = part.strip_prefix("patch") {
                patch = p.parse().map_err(|_| unknown())?;
                ensure!([4, 8, 14, 16].contains(&patch), "{name}: patch size must be 4, 8, 14 or 16");
            } else if let Some(d) = part.strip_prefix("depth") {
                depth = d.parse().map_err(|_| unknown())?;
                ensure!(depth >= 1, "{name}: depth must be at least 1");
            } else {
                return Err(unknown());
            }
        }
        Ok(Arch::Vit { width, depth, heads, patch, layer_scale })
    }

    /// A line of Python that builds this network in timm, ready for `backbone.safetensors` (strict load):
    /// a timm model by name, with the constructor arguments or the stem swap that make it this one.
    pub fn timm_python(&self, in_chans: i64, img_size: i64) -> String {
        match *self {
            Arch::Vit { width, depth, patch, layer_scale, .. } => {
                let size = match width { 192 => "tiny", 384 => "small", _ => "base" };
                let name = if layer_scale { format!("vit_{size}_patch14_dinov2") } else { format!("vit_{size}_patch16_224") };
                format!("model = timm.create_model(\"{name}\", patch_size={patch}, depth={depth}, img_size={img_size}, in_chans={in_chans}, num_classes=0)")
            }
            Arch::Resnet { depth, small_stem, stem_stride, width } => {
                if width == 64 {
                    let mut line = format!("model = timm.create_model(\"resnet{depth}\", in_chans={in_chans}, num_classes=0)");
                    if small_stem {
                        line += &format!("; model.conv1 = torch.nn.Conv2d({in_chans}, 64, 3, {stem_stride}, 1, bias=False); model.maxpool = torch.nn.Identity()");
                    }
                    return line;
                }
                // timm's plain stem always has 64 channels: build its ResNet with these stage widths, then give
                // it a stem of `width` channels and a first block that takes them.
                let (block, layers) = match depth { 18 => ("BasicBlock", "2, 2, 2, 2"), 34 => ("BasicBlock", "3, 4, 6, 3"), _ => ("Bottleneck", "3, 4, 6, 3") };
                let (w, nn) = (width, "torch.nn");
                let stem = if small_stem { format!("{nn}.Conv2d({in_chans}, {w}, 3, {stem_stride}, 1, bias=False)") } else { format!("{nn}.Conv2d({in_chans}, {w}, 7, 2, 3, bias=False)") };
                let first_block = if block == "BasicBlock" {
                    format!("timm.models.resnet.BasicBlock({w}, {w})")
                } else {
                    format!("timm.models.resnet.Bottleneck({w}, {w}, downsample={nn}.Sequential({nn}.Conv2d({w}, {}, 1, bias=False), {nn}.BatchNorm2d({})))", 4 * w, 4 * w)
                };
                let mut line = format!(
                    "model = timm.models.resnet.ResNet(timm.models.resnet.{block}, [{layers}], channels=({w}, {}, {}, {}), in_chans={in_chans}, num_classes=0); \
                     model.conv1 = {stem}; model.bn1 = {nn}.BatchNorm2d({w}); model.layer1[0] = {first_block}",
                    2 * w, 4 * w, 8 * w
                );
                if small_stem {
                    line += "; model.maxpool = torch.nn.Identity()";
                }
                line
            }
        }
    }

    /// How timm's default pretrained weights for this architecture were evaluated (their `pretrained_cfg`),
    /// for weights that carry no statistics of their own. None where timm has no such weights.
    pub fn timm_preprocessing(&self) -> Option<TimmPreprocessing> {
        const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let bicubic = |crop_pct| TimmResize { crop_pct, filter: Filter::Bicubic };
        let name = self.timm_name()?;
        let (input_size, (mean, std), resize) = match *self {
            // vit_*_patch16_224 (augreg): Inception's statistics, 90% centre crop.
            Arch::Vit { patch: 16, layer_scale: false, .. } => (224, ([0.5; 3], [0.5; 3]), bicubic(0.9)),
            Arch::Vit { patch: 14, layer_scale: true, .. } => (518, IMAGENET, bicubic(1.0)),
            Arch::Resnet { small_stem: false, width: 64, .. } => (224, IMAGENET, bicubic(0.95)),
            _ => return None,
        };
        Some(TimmPreprocessing { name, input_size, mean: mean.to_vec(), std: std.to_vec(), resize })
    }

    /// The timm model name with the same configuration, where one exists.
    pub fn timm_name(&self) -> Option<String> {
        match *self {
            Arch::Vit { width, depth: 12, patch, layer_scale, .. } => {
                let size = match width { 192 => "tiny", 384 => "small", _ => "base" };
                Some(if layer_scale { format!("vit_{size}_patch{patch}_dinov2") } else { format!("vit_{size}_patch{patch}_224") })
            }
            Arch::Resnet { depth, small_stem: false, width: 64, .. } => Some(format!("resnet{depth}")),
            _ => None,
        }
    }
}

/// timm's evaluation preprocessing for an architecture's default pretrained weights.
#[derive(Clone, Debug, PartialEq)]
pub struct TimmPreprocessing {
    /// timm's model name, e.g. `vit_small_patch16_224`.
    pub name: String,
    pub input_size: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub resize: TimmResize,
}

pub enum Backbone {
    Vit(Vit),
    ResNet(ResNet),
}

impl Backbone {
    /// Builds the backbone under `path` for images of `in_chans` channels and `img_size` pixels.
    pub fn new(path: &nn::Path, arch: Arch, in_chans: i64, img_size: i64, drop_path: f64) -> Result<Backbone> {
        Ok(match arch {
            Arch::Vit { width, depth, heads, patch, layer_scale } => {
                ensure!(img_size % patch == 0, "image size {img_size} is not a multiple of the patch size {patch}");
                let config = VitConfig { width, depth, heads, patch, in_chans, img_size, mlp_ratio: 4.0, drop_path, layer_scale };
                Backbone::Vit(Vit::new(path, config))
            }
            Arch::Resnet { depth, small_stem, stem_stride, width } => {
                Backbone::ResNet(ResNet::new(path, ResNetConfig { depth, in_chans, small_stem, stem_stride, width, drop_path }))
            }
        })
    }

    pub fn forward(&self, images: &Tensor, train: bool) -> Features {
        match self {
            Backbone::Vit(vit) => vit.forward(images, train),
            Backbone::ResNet(resnet) => resnet.forward(images, train),
        }
    }

    /// For feature pictures (eval mode): per-location features `[B, h·w, D]` (ViT: final-norm patch
    /// tokens; ResNet: the last feature map), the grid (h, w), and for a ViT the last block's
    /// class-token attention per head `[B, heads, 1 + h·w]`.
    pub fn patch_features(&self, images: &Tensor) -> (Tensor, (i64, i64), Option<Tensor>) {
        match self {
            Backbone::Vit(vit) => {
                let (tokens, grid, attention) = vit.patch_tokens_and_attention(images);
                (tokens, grid, Some(attention))
            }
            Backbone::ResNet(resnet) => {
                let map = resnet.feature_map(images); // [B, C, h, w]
                let (b, c, h, w) = map.size4().unwrap();
                (map.permute([0, 2, 3, 1]).reshape([b, h * w, c]), (h, w), None)
            }
        }
    }

    pub fn embed_dim(&self) -> i64 {
        match self {
            Backbone::Vit(vit) => vit.config().width,
            Backbone::ResNet(resnet) => resnet.config().embed_dim(),
        }
    }

    pub fn probe_dim(&self) -> i64 {
        match self {
            Backbone::Vit(vit) => vit.config().width * vit.config().depth.min(2),
            Backbone::ResNet(resnet) => resnet.config().embed_dim() * 2,
        }
    }
}

/// PyTorch's default Linear/Conv initialisation, U(±1/√fan_in) for weights and biases
/// (tch's default Kaiming-uniform is √6 times wider).
pub fn pytorch_default_init(fan_in: i64) -> nn::ConvConfig {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let uniform = nn::Init::Uniform { lo: -bound, up: bound };
    nn::ConvConfig { ws_init: uniform, bs_init: uniform, ..Default::default() }
}

/// libtorch's BatchNorm, or SyncBatchNorm once [`Encoder::sync_batch_norm`] gave it a process group:
/// in training mode the batch statistics are then those of the global batch over all processes.
#[derive(Debug)]
pub struct BatchNorm {
    pub inner: nn::BatchNorm,
    sync: Option<Arc<ProcessGroup>>,
}

impl BatchNorm {
    pub fn new(inner: nn::BatchNorm) -> BatchNorm {
        BatchNorm { inner, sync: None }
    }
}

impl nn::ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match (&self.sync, train) {
            // A failed collective means another process is gone; there is no batch to return.
            (Some(group), true) => sync_batch_norm(x, &self.inner, group).unwrap_or_else(|e| panic!("{e:#}")),
            _ => x.apply_t(&self.inner, train),
        }
    }
}

/// The head that maps a backbone embedding to the space SIGReg makes Gaussian: optionally a plain
/// Linear to `embedding_dim` first (the official recipes' 512-d embedding: timm's `num_classes=512` in
/// MINIMAL.md, `embedding_dim=512` in the launch scripts), then Linear–BatchNorm–ReLU twice and a Linear
/// (paper: 2048-2048-64). The MLP's variables are named as torchvision's `ops.MLP` numbers its layers
/// (0, 1, 4, 5, 8), so its state_dict loads as is; the embedding layer is `embedding`.
pub struct Projector {
    embedding: Option<nn::Linear>,
    layers: Vec<(nn::Linear, Option<BatchNorm>)>,
}

/// PyTorch's default Linear initialisation: weight and bias uniform in ±1/√fan_in.
fn torch_linear(path: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let uniform = nn::Init::Uniform { lo: -bound, up: bound };
    nn::linear(path, in_dim, out_dim, nn::LinearConfig { ws_init: uniform, bs_init: Some(uniform), bias: true })
}

impl Projector {
    pub fn new(path: &nn::Path, in_dim: i64, embedding_dim: Option<i64>, dims: &[i64]) -> Result<Projector> {
        ensure!(!dims.is_empty(), "the projector needs at least one layer");
        ensure!(embedding_dim.is_none_or(|d| d > 0), "embedding_dim must be positive");
        let embedding = embedding_dim.map(|dim| torch_linear(path / "embedding", in_dim, dim));
        let mut layers = Vec::new();
        let mut prev = embedding_dim.unwrap_or(in_dim);
        for (i, &dim) in dims.iter().enumerate() {
            let last = i + 1 == dims.len();
            let linear = torch_linear(path / (4 * i), prev, dim);
            let norm = (!last).then(|| {
                let config = nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() };
                BatchNorm::new(nn::batch_norm1d(path / (4 * i + 1), dim, config))
            });
            layers.push((linear, norm));
            prev = dim;
        }
        Ok(Projector { embedding, layers })
    }

    /// The width of the embedding layer's output, if there is one.
    pub fn embedding_dim(&self) -> Option<i64> {
        self.embedding.as_ref().map(|linear| linear.ws.size()[0])
    }

    /// `[B, D]` → `[B, embedding_dim]` through the embedding layer; the input itself without one.
    pub fn embed(&self, x: &Tensor) -> Tensor {
        match &self.embedding {
            Some(linear) => x.apply(linear),
            None => x.shallow_clone(),
        }
    }

    /// The MLP alone: `[B, embedding_dim or D]` → `[B, dims.last()]`.
    pub fn mlp(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = x.shallow_clone();
        for (linear, norm) in &self.layers {
            x = x.apply(linear);
            if let Some(norm) = norm {
                x = x.apply_t(norm, train).relu();
            }
        }
        x
    }

    /// `[B, D]` → `[B, dims.last()]`: the embedding layer (if any), then the MLP.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.mlp(&self.embed(x), train)
    }
}

/// Copies every variable of `vs` from a training checkpoint's tensors (read from `path`, named in
/// errors), where each is stored under `prefix` + its VarStore name.
pub fn copy_variables(vs: &nn::VarStore, prefix: &str, tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let shown = path.display();
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            let value = tensors.get(&format!("{prefix}{name}")).with_context(|| format!("{shown}: no tensor '{prefix}{name}' (a checkpoint of another config?)"))?;
            ensure!(value.size() == var.size(), "{shown}: '{prefix}{name}' has shape {:?}, the model {:?}", value.size(), var.size());
            var.shallow_clone().copy_(&value.to_kind(var.kind()));
        }
        Ok(())
    })
}

/// All tensors of a safetensors file, with errors that name it.
pub fn read_weights(path: &Path) -> Result<Vec<(String, Tensor)>> {
    ensure!(path.exists(), "{}: no such file", path.display());
    Tensor::read_safetensors(path).map_err(|e| anyhow::anyhow!("{}: not a readable safetensors file ({e})", path.display()))
}

/// Backbone and projector in one VarStore, under `backbone.` and `projector.`.
pub struct Encoder {
    pub vs: nn::VarStore,
    pub backbone: Backbone,
    pub projector: Projector,
}

impl Encoder {
    pub fn new(device: Device, arch: Arch, in_chans: i64, img_size: i64, drop_path: f64, projector: &[i64]) -> Result<Encoder> {
        Encoder::with_embedding(device, arch, in_chans, img_size, drop_path, None, projector)
    }

    /// The same with a linear embedding layer of `embedding_dim` between backbone and projector.
    pub fn with_embedding(
        device: Device, arch: Arch, in_chans: i64, img_size: i64, drop_path: f64, embedding_dim: Option<i64>, projector: &[i64],
    ) -> Result<Encoder> {
        // Initialised on the CPU, then moved: the same seed gives the same weights on every device
        // (CUDA's generator draws other numbers than the CPU's).
        let mut vs = nn::VarStore::new(Device::Cpu);
        let backbone = Backbone::new(&(vs.root() / "backbone"), arch, in_chans, img_size, drop_path)?;
        let projector = Projector::new(&(vs.root() / "projector"), backbone.embed_dim(), embedding_dim, projector)?;
        vs.set_device(device);
        Ok(Encoder { vs, backbone, projector })
    }

    /// Turns every BatchNorm (backbone and projector) into a SyncBatchNorm over `group`, as
    /// torch's `SyncBatchNorm.convert_sync_batchnorm`.
    pub fn sync_batch_norm(&mut self, group: &Arc<ProcessGroup>) {
        let norms = self.projector.layers.iter_mut().filter_map(|(_, norm)| norm.as_mut());
        let backbone: Vec<&mut BatchNorm> = match &mut self.backbone {
            Backbone::ResNet(resnet) => resnet.batch_norms(),
            Backbone::Vit(_) => Vec::new(), // LayerNorm only
        };
        for norm in norms.chain(backbone) {
            norm.sync = Some(group.clone());
        }
    }

    /// Number of trainable parameters of the backbone alone (what timm counts with num_classes=0).
    pub fn backbone_parameters(&self) -> i64 {
        self.vs
            .variables()
            .iter()
            .filter(|(name, t)| name.starts_with("backbone.") && t.requires_grad())
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// The backbone's tensors under timm's names (prefix stripped), BatchNorm counters as int64.
    pub fn backbone_state(&self) -> Vec<(String, Tensor)> {
        let mut state: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter_map(|(name, t)| {
                let name = name.strip_prefix("backbone.")?.to_string();
                let t = if name.ends_with("num_batches_tracked") { t.to_kind(Kind::Int64) } else { t.detach() };
                Some((name, t))
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// Writes the backbone as safetensors with timm's names, atomically (temporary file, then rename).
    pub fn save_backbone(&self, path: &Path) -> Result<()> {
        let state: Vec<(String, Tensor)> =
            self.backbone_state().into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous())).collect();
        let tmp = path.with_extension("safetensors.tmp");
        Tensor::write_safetensors(&state, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Loads backbone weights saved with timm's names (by lejepa or by timm). Strict: every
    /// tensor of the model must be in the file with the same shape, and the file may hold nothing else
    /// (a classifier head `head.*`/`fc.*` is ignored).
    pub fn load_backbone(&mut self, path: &Path) -> Result<()> {
        self.load_backbone_tensors(path, read_weights(path)?)
    }

    /// The same from tensors already read from `path` (named in errors).
    pub fn load_backbone_tensors(&mut self, path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
        let shown = path.display();
        let mut file: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let variables = self.vs.variables();
        let mut missing = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for (name, var) in &variables {
                let Some(timm_name) = name.strip_prefix("backbone.") else { continue };
                match file.remove(timm_name) {
                    None => missing.push(timm_name.to_string()),
                    Some(value) => {
                        ensure!(
                            value.size() == var.size(),
                            "{shown}: tensor '{timm_name}' has shape {:?}, the model expects {:?} (wrong --arch, image size or channels?)",
                            value.size(),
                            var.size()
                        );
                        var.shallow_clone().copy_(&value.to_kind(var.kind()));
                    }
                }
            }
            Ok(())
        })?;
        missing.sort();
        if !missing.is_empty() {
            bail!("{shown}: {} tensor(s) of the model are missing, e.g. {} (wrong --arch?)", missing.len(), missing[..missing.len().min(3)].join(", "));
        }
        let mut extra: Vec<String> =
            file.into_keys().filter(|n| !(n.starts_with("head.") || n.starts_with("fc.") || n.starts_with("head_drop"))).collect();
        extra.sort();
        ensure!(extra.is_empty(), "{shown}: {} tensor(s) the model does not have, e.g. {} (wrong --arch?)", extra.len(), extra[..extra.len().min(3)].join(", "));
        Ok(())
    }
}

/// LayerNorm + Linear on detached backbone features (MINIMAL.md's online probe).
pub struct LinearProbe {
    norm: nn::LayerNorm,
    linear: nn::Linear,
}

impl LinearProbe {
    pub fn new(path: &nn::Path, in_dim: i64, classes: i64) -> LinearProbe {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let uniform = nn::Init::Uniform { lo: -bound, up: bound };
        LinearProbe {
            norm: nn::layer_norm(path / "norm", vec![in_dim], Default::default()),
            linear: nn::linear(path / "linear", in_dim, classes, nn::LinearConfig { ws_init: uniform, bs_init: Some(uniform), bias: true }),
        }
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        features.apply(&self.norm).apply(&self.linear)
    }

    /// The weights' precision (f32, or f64 for checks).
    pub fn kind(&self) -> Kind {
        self.linear.ws.kind()
    }
}

/// Drops the whole residual branch of random samples while training, rescaling the kept ones.
pub fn drop_path(branch: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate == 0.0 {
        return branch;
    }
    let keep = 1.0 - rate;
    let mut shape = vec![branch.size()[0]];
    shape.resize(branch.dim(), 1);
    let mask = Tensor::empty(shape.as_slice(), (branch.kind(), branch.device())).bernoulli_float_(keep);
    branch * mask / keep
}
