//! ResNet-18/34/50 with timm's (= torchvision's) parameter names, without the classifier.
//! Two stems: the ImageNet one (7×7 stride-2 conv + max-pool) and a small-image one (3×3 conv, no
//! max-pool) for 28–96 px inputs, where the ImageNet stem would throw away most pixels; the small stem
//! has stride 1, or 2 where a quarter of the compute is worth more than full resolution in the first stage.

use std::ffi::c_char;

use tch::nn;
use tch::Tensor;
use torch_sys::C_tensor;

use super::{BatchNorm, Features, drop_path};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResNetConfig {
    /// 18, 34 or 50.
    pub depth: i64,
    pub in_chans: i64,
    pub small_stem: bool,
    /// Stride of the small stem's 3×3 conv (1 or 2); the ImageNet stem always has stride 2.
    pub stem_stride: i64,
    /// Channels of the stem and the first stage (64 in the paper's ResNets); the stages have 1, 2, 4, 8 times it.
    pub width: i64,
    /// Stochastic-depth rate of the last block (linearly increasing over the blocks).
    pub drop_path: f64,
}

impl ResNetConfig {
    fn bottleneck(&self) -> bool {
        self.depth >= 50
    }

    fn blocks_per_stage(&self) -> [i64; 4] {
        match self.depth {
            18 => [2, 2, 2, 2],
            34 | 50 => [3, 4, 6, 3],
            other => panic!("no ResNet-{other}; known depths are 18, 34 and 50"),
        }
    }

    pub fn embed_dim(&self) -> i64 {
        if self.bottleneck() { 32 * self.width } else { 8 * self.width }
    }
}

/// timm: kaiming_normal(fan_out, relu) for convolutions, no bias (BatchNorm follows).
fn conv(path: nn::Path, in_c: i64, out_c: i64, kernel: i64, stride: i64) -> nn::Conv2D {
    let init = nn::Init::Kaiming {
        dist: nn::init::NormalOrUniform::Normal,
        fan: nn::init::FanInOut::FanOut,
        non_linearity: nn::init::NonLinearity::ReLU,
    };
    let config = nn::ConvConfig { stride, padding: kernel / 2, bias: false, ws_init: init, ..Default::default() };
    nn::conv2d(path, in_c, out_c, kernel, config)
}

/// BatchNorm with PyTorch's γ = 1 (tch defaults to uniform [0, 1)), or γ = 0 for the last norm of a
/// residual branch (timm's zero_init_last: every block starts as the identity). Also registers
/// `num_batches_tracked`, so saved weights load into PyTorch with strict=True.
fn batch_norm(path: nn::Path, channels: i64, zero_gamma: bool) -> BatchNorm {
    let gamma = if zero_gamma { 0.0 } else { 1.0 };
    let _ = path.zeros_no_train("num_batches_tracked", &[]); // stored as int64 on export
    BatchNorm::new(nn::batch_norm2d(path, channels, nn::BatchNormConfig { ws_init: nn::Init::Const(gamma), ..Default::default() }))
}

struct Block {
    convs: Vec<(nn::Conv2D, BatchNorm)>,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
    drop_path: f64,
}

impl Block {
    fn new(path: nn::Path, in_c: i64, planes: i64, stride: i64, bottleneck: bool, drop_path: f64) -> Block {
        // (kernel, in, out, stride) of each conv; the stride sits on the 3×3 conv (ResNet v1.5).
        let layout: Vec<(i64, i64, i64, i64)> = if bottleneck {
            vec![(1, in_c, planes, 1), (3, planes, planes, stride), (1, planes, planes * 4, 1)]
        } else {
            vec![(3, in_c, planes, stride), (3, planes, planes, 1)]
        };
        let out_c = layout.last().unwrap().2;
        let last = layout.len();
        let convs = layout
            .into_iter()
            .enumerate()
            .map(|(i, (k, cin, cout, s))| {
                let n = i + 1;
                (conv(&path / format!("conv{n}"), cin, cout, k, s), batch_norm(&path / format!("bn{n}"), cout, n == last))
            })
            .collect();
        let downsample = (stride != 1 || in_c != out_c).then(|| {
            let ds = &path / "downsample";
            (conv(&ds / 0, in_c, out_c, 1, stride), batch_norm(&ds / 1, out_c, false))
        });
        Block { convs, downsample, drop_path }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut branch = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            branch = branch.apply(conv).apply_t(bn, train);
            if i + 1 < self.convs.len() {
                branch = branch.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some((conv, bn)) => x.apply(conv).apply_t(bn, train),
            None => x.shallow_clone(),
        };
        (drop_path(branch, self.drop_path, train) + shortcut).relu()
    }
}

pub struct ResNet {
    config: ResNetConfig,
    stem: (nn::Conv2D, BatchNorm),
    blocks: Vec<Block>,
}

impl ResNet {
    pub fn new(path: &nn::Path, config: ResNetConfig) -> ResNet {
        let stem_conv = if config.small_stem {
            conv(path / "conv1", config.in_chans, config.width, 3, config.stem_stride)
        } else {
            conv(path / "conv1", config.in_chans, config.width, 7, 2)
        };
        let stem = (stem_conv, batch_norm(path / "bn1", config.width, false));
        let expansion = if config.bottleneck() { 4 } else { 1 };
        let total_blocks: i64 = config.blocks_per_stage().iter().sum();
        let mut blocks = Vec::new();
        let mut in_c = config.width;
        let planes_per_stage = [1, 2, 4, 8].map(|m| m * config.width);
        for (stage, (&count, planes)) in config.blocks_per_stage().iter().zip(planes_per_stage).enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let rate = config.drop_path * blocks.len() as f64 / (total_blocks - 1) as f64;
                let layer = path / format!("layer{}", stage + 1) / i;
                blocks.push(Block::new(layer, in_c, planes, stride, config.bottleneck(), rate));
                in_c = planes * expansion;
            }
        }
        ResNet { config, stem, blocks }
    }

    /// Every BatchNorm, for [`super::Encoder::sync_batch_norm`].
    pub fn batch_norms(&mut self) -> Vec<&mut BatchNorm> {
        let mut norms = vec![&mut self.stem.1];
        for block in &mut self.blocks {
            norms.extend(block.convs.iter_mut().map(|(_, bn)| bn));
            norms.extend(block.downsample.iter_mut().map(|(_, bn)| bn));
        }
        norms
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// images: `[B, C, H, W]` → the last block's output, average-pooled (timm's embedding), and the
    /// pooled outputs of the last two blocks, concatenated: the paper's probe features ("the last two
    /// layers", mean-pooled where there is no class token), as the ViT's two class tokens.
    pub fn forward(&self, images: &Tensor, train: bool) -> Features {
        let blocks = self.blocks.len();
        let mut last_two_pooled = Vec::with_capacity(2);
        let _last = self.trunk(images, train, |i, x| {
            if i + 2 >= blocks {
                last_two_pooled.push(x.mean_dim(&[2i64, 3][..], false, None::<tch::Kind>)); // [B, C]
            }
        });
        let embedding = last_two_pooled.last().expect("a ResNet has blocks").shallow_clone();
        Features { probe: Tensor::cat(&last_two_pooled, 1), embedding }
    }

    /// The last block's output before pooling, `[B, C, h, w]` (eval mode): what a feature picture shows.
    pub fn feature_map(&self, images: &Tensor) -> Tensor {
        self.trunk(images, false, |_, _| {})
    }

    /// Stem and blocks; `each(i, x)` sees block i's output. Returns the last block's.
    fn trunk(&self, images: &Tensor, train: bool, mut each: impl FnMut(usize, &Tensor)) -> Tensor {
        let images = channels_last(&images.to_kind(self.stem.0.ws.kind())); // the weights' precision (f32, or f64 for checks)
        let mut x = images.apply(&self.stem.0).apply_t(&self.stem.1, train).relu();
        if !self.config.small_stem {
            x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, train);
            each(i, &x);
        }
        x
    }
}

unsafe extern "C" {
    fn lejepa_channels_last(x: *mut C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
}

/// `images` in channels-last (NHWC) layout: libtorch's convolutions then keep that layout through the
/// network, which is faster on the CPU (BENCHMARKS.md); the values are the same.
fn channels_last(images: &Tensor) -> Tensor {
    // SAFETY: `images` is a live tensor for the call.
    crate::ffi::tensor_from_shim(|out| unsafe { lejepa_channels_last(images.as_ptr() as *mut C_tensor, out) })
        .unwrap_or_else(|e| panic!("channels-last copy failed: {e}"))
}
