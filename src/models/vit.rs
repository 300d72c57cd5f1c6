//! Vision Transformer, laid out exactly as timm's `VisionTransformer` (class token, learnable
//! absolute position embedding, pre-LayerNorm blocks, no head) so that the variable paths *are*
//! timm's parameter names: `blocks.3.attn.qkv.weight` and so on.

use tch::nn;
use tch::{Device, Kind, Tensor};

use super::{Features, drop_path, pytorch_default_init};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    pub width: i64,
    pub depth: i64,
    pub heads: i64,
    pub patch: i64,
    pub in_chans: i64,
    /// The image size the position embedding is laid out for; other sizes interpolate it.
    pub img_size: i64,
    pub mlp_ratio: f64,
    /// Stochastic-depth rate of the last block (linearly increasing from 0 over the depth).
    pub drop_path: f64,
    /// DINOv2's LayerScale: each residual branch times a learned per-channel γ (initialised 1e-5).
    #[serde(default)]
    pub layer_scale: bool,
}

struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    /// LayerScale γ of the attention and MLP branches (DINOv2), when the model has them.
    layer_scales: Option<(Tensor, Tensor)>,
    heads: i64,
    drop_path: f64,
}

pub struct Vit {
    config: VitConfig,
    patch_proj: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

/// timm initialises ViT linears with trunc_normal(std=0.02) (bounds ±2 are ~100σ: a plain normal) and zero biases.
fn vit_linear(path: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(path, in_dim, out_dim, config)
}

fn layer_norm(path: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(path, vec![dim], nn::LayerNormConfig { eps: 1e-6, ..Default::default() })
}

/// `[B, T, 3, heads, head_dim]` → q, k, v (or `[B, T, 2, …]` → k, v) as `[B, heads, T, head_dim]` views, split with unbind
/// (three `select`s would each give a backward that zero-fills a whole qkv-sized gradient) on the axis where the linear layer put them. timm permutes that axis
/// to the front first; unbinding it in place makes the backward stack the three gradients straight
/// into the layer's [B, T, 3·width] layout, one copy fewer.
fn split_heads<const N: usize>(packed: &Tensor) -> [Tensor; N] {
    packed.unbind(2).iter().map(|x| x.transpose(1, 2)).collect::<Vec<_>>().try_into().unwrap()
}

/// On the CPU, up to this many queries attend through plain matrix products.
const PLAIN_ATTENTION_MAX_QUERIES: i64 = 32;

/// softmax(q·kᵀ/√head_dim)·v, q `[B, heads, queries, head_dim]`, k and v `[B, heads, T, head_dim]`.
/// libtorch's fused kernel, except for few queries on the CPU (the local crops' 10 tokens, the last
/// block's class token), where its blocking costs more than it saves: at 10 tokens the three plain
/// products take half its time, and from 50 tokens on it is as fast or faster (timings in BENCHMARKS.md).
fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let (_, _, queries, head_dim) = q.size4().unwrap();
    if q.device() == Device::Cpu && queries <= PLAIN_ATTENTION_MAX_QUERIES {
        let scores = q.matmul(&k.transpose(-2, -1)) * (head_dim as f64).powf(-0.5);
        return scores.softmax(-1, q.kind()).matmul(v);
    }
    Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false)
}

impl Block {
    fn new(path: nn::Path, width: i64, heads: i64, mlp_ratio: f64, drop_path: f64, layer_scale: bool) -> Block {
        let hidden = (width as f64 * mlp_ratio) as i64;
        let gamma = |name: &str| (&path / name).var("gamma", &[width], nn::Init::Const(1e-5));
        Block {
            layer_scales: layer_scale.then(|| (gamma("ls1"), gamma("ls2"))),
            norm1: layer_norm(&path / "norm1", width),
            qkv: vit_linear(&path / "attn" / "qkv", width, 3 * width),
            proj: vit_linear(&path / "attn" / "proj", width, width),
            norm2: layer_norm(&path / "norm2", width),
            fc1: vit_linear(&path / "mlp" / "fc1", width, hidden),
            fc2: vit_linear(&path / "mlp" / "fc2", hidden, width),
            heads,
            drop_path,
        }
    }

    /// `x`: `[B, T, width]` → `[B, T, width]`, or `[B, 1, width]` (the class token alone) when
    /// `class_token_only`: the last block's other tokens feed nothing (the embedding and the probe
    /// read class tokens), so there it needs every token's keys and values but the query, attention
    /// output and MLP of the class token only, 10/12 of its products fewer.
    /// The class token's attention weights over all tokens, per head: `[B, heads, T]`, rows summing to 1.
    fn class_attention(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().unwrap();
        let head_dim = d / self.heads;
        let [q, k, _] = split_heads(&x.apply(&self.norm1).apply(&self.qkv).reshape([b, t, 3, self.heads, head_dim]));
        let scores = q.narrow(2, 0, 1).matmul(&k.transpose(-2, -1)) * (head_dim as f64).powf(-0.5); // [B, heads, 1, T]
        scores.softmax(-1, Kind::Float).squeeze_dim(2)
    }

    fn forward(&self, x: &Tensor, train: bool, class_token_only: bool) -> Tensor {
        let (b, t, d) = x.size3().unwrap();
        let head_dim = d / self.heads;
        let normed = x.apply(&self.norm1);
        let (q, k, v, x) = if class_token_only {
            // The qkv layer's rows are q, then k, then v: the query rows apply to the class token alone.
            let (weight, bias) = (&self.qkv.ws, self.qkv.bs.as_ref().unwrap());
            let q = normed.narrow(1, 0, 1).linear(&weight.narrow(0, 0, d), Some(bias.narrow(0, 0, d)));
            let kv = normed.linear(&weight.narrow(0, d, 2 * d), Some(bias.narrow(0, d, 2 * d)));
            let [k, v] = split_heads(&kv.reshape([b, t, 2, self.heads, head_dim]));
            (q.reshape([b, 1, self.heads, head_dim]).transpose(1, 2), k, v, x.narrow(1, 0, 1))
        } else {
            let [q, k, v] = split_heads(&normed.apply(&self.qkv).reshape([b, t, 3, self.heads, head_dim]));
            (q, k, v, x.shallow_clone())
        };
        let queries = q.size()[2];
        let attended = if q.kind() == Kind::BFloat16 && q.device() == Device::Cpu {
            // libtorch's bf16 attention backward on the CPU is 3–10× slower than its f32 one, so under
            // bf16 autocast attention alone runs in f32 there.
            let f32 = |x: &Tensor| x.to_kind(Kind::Float);
            crate::autocast::without_cpu_autocast(|| attention(&f32(&q), &f32(&k), &f32(&v))).to_kind(Kind::BFloat16)
        } else {
            attention(&q, &k, &v)
        }; // [B, heads, queries, head_dim]
        let mut attended = attended.transpose(1, 2).reshape([b, queries, d]).apply(&self.proj);
        if let Some((gamma, _)) = &self.layer_scales {
            attended = attended * gamma;
        }
        let x = x + drop_path(attended, self.drop_path, train);
        let mut mlp = x.apply(&self.norm2).apply(&self.fc1).gelu("none").apply(&self.fc2);
        if let Some((_, gamma)) = &self.layer_scales {
            mlp = mlp * gamma;
        }
        &x + drop_path(mlp, self.drop_path, train)
    }
}

impl Vit {
    pub fn new(path: &nn::Path, config: VitConfig) -> Vit {
        let VitConfig { width, depth, patch, in_chans, img_size, .. } = config;
        let grid = img_size / patch;
        let patch_proj = nn::conv2d(
            path / "patch_embed" / "proj",
            in_chans,
            width,
            patch,
            nn::ConvConfig { stride: patch, ..pytorch_default_init(in_chans * patch * patch) },
        );
        let cls_token = path.var("cls_token", &[1, 1, width], nn::Init::Randn { mean: 0.0, stdev: 1e-6 });
        let pos_embed = path.var("pos_embed", &[1, 1 + grid * grid, width], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
        let blocks = (0..depth)
            .map(|i| {
                // Stochastic depth grows linearly with depth, as in timm and DINO.
                let rate = if depth > 1 { config.drop_path * i as f64 / (depth - 1) as f64 } else { config.drop_path };
                Block::new(path / "blocks" / i, width, config.heads, config.mlp_ratio, rate, config.layer_scale)
            })
            .collect();
        Vit { config, patch_proj, cls_token, pos_embed, blocks, norm: layer_norm(path / "norm", width) }
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Position embedding for a `grid_h × grid_w` patch grid: the learned one, resampled bicubically
    /// with antialiasing (timm's `resample_abs_pos_embed`) when a view's size differs from img_size.
    fn pos_embed_for(&self, grid_h: i64, grid_w: i64) -> Tensor {
        let grid = self.config.img_size / self.config.patch;
        if grid_h == grid && grid_w == grid {
            return self.pos_embed.shallow_clone();
        }
        let width = self.config.width;
        let cls_pos = self.pos_embed.narrow(1, 0, 1);
        let patch_pos = self.pos_embed.narrow(1, 1, grid * grid).reshape([1, grid, grid, width]).permute([0, 3, 1, 2]);
        let resampled = patch_pos
            .to_kind(Kind::Float)
            .internal_upsample_bicubic2d_aa([grid_h, grid_w], false, None, None)
            .to_kind(patch_pos.kind());
        let resampled = resampled.permute([0, 2, 3, 1]).reshape([1, grid_h * grid_w, width]);
        Tensor::cat(&[cls_pos, resampled], 1)
    }

    /// images: `[B, C, H, W]` → the final-norm class token and the raw class tokens of the last two blocks.
    /// The class token and the patch tokens with their position embedding, `[B, 1 + h·w, width]`, and the grid (h, w).
    fn tokens(&self, images: &Tensor) -> (Tensor, (i64, i64)) {
        let images = images.to_kind(self.patch_proj.ws.kind()); // the weights' precision (f32, or f64 for checks)
        let patches = images.apply(&self.patch_proj); // [B, width, H/p, W/p]
        let (b, _, grid_h, grid_w) = patches.size4().unwrap();
        let tokens = patches.flatten(2, 3).transpose(1, 2); // [B, T, width]
        let cls = self.cls_token.expand([b, -1, -1], false);
        (Tensor::cat(&[cls, tokens], 1) + self.pos_embed_for(grid_h, grid_w), (grid_h, grid_w))
    }

    /// What a feature picture shows (eval mode): the final-norm patch tokens `[B, h·w, width]`, their
    /// grid (h, w), and the class token's attention over all tokens (itself first) in the last block,
    /// per head, `[B, heads, 1 + h·w]`.
    pub fn patch_tokens_and_attention(&self, images: &Tensor) -> (Tensor, (i64, i64), Tensor) {
        let (mut x, grid) = self.tokens(images);
        let (last, earlier) = self.blocks.split_last().expect("a ViT has blocks");
        for block in earlier {
            x = block.forward(&x, false, false);
        }
        let attention = last.class_attention(&x);
        let x = last.forward(&x, false, false).apply(&self.norm);
        (x.narrow(1, 1, grid.0 * grid.1), grid, attention)
    }

    pub fn forward(&self, images: &Tensor, train: bool) -> Features {
        let (mut x, _) = self.tokens(images);
        let mut last_two_cls = Vec::with_capacity(2);
        let depth = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, train, i + 1 == depth); // [B, 1, width] after the last block
            if i + 2 >= depth {
                last_two_cls.push(x.select(1, 0));
            }
        }
        let embedding = x.select(1, 0).apply(&self.norm); // timm's pooled output with num_classes=0
        Features { embedding, probe: Tensor::cat(&last_two_cls, 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain products and libtorch's fused (flash) kernel compute the same attention, values and
    /// gradients to f32 rounding, on the strided q, k, v views the blocks pass (unbound in place, not copied).
    #[test]
    fn plain_attention_matches_the_fused_kernel() {
        tch::manual_seed(0);
        let (b, t, heads, head_dim) = (4, 10, 3, 16);
        let qkv = Tensor::randn([b, t, 3, heads, head_dim], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let [q, k, v] = split_heads(&qkv);
        let upstream = Tensor::randn([b, heads, t, head_dim], (Kind::Float, Device::Cpu));
        let value_and_gradient = |out: Tensor| {
            let gradient = Tensor::run_backward(&[(&out * &upstream).sum(Kind::Float)], &[&qkv], true, false).pop().unwrap();
            (out, gradient)
        };
        assert!(t <= PLAIN_ATTENTION_MAX_QUERIES, "the test must take the plain path");
        let (plain, plain_gradient) = value_and_gradient(attention(&q, &k, &v));
        let fused = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false);
        let (fused, fused_gradient) = value_and_gradient(fused);
        let max_diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(max_diff(&plain, &fused) < 1e-5, "values differ by {}", max_diff(&plain, &fused));
        assert!(max_diff(&plain_gradient, &fused_gradient) < 1e-5, "gradients differ by {}", max_diff(&plain_gradient, &fused_gradient));
    }

    /// The last block's class-token-only path computes what the whole block computes at the class
    /// token, values and the gradients of its input and every parameter, with and without LayerScale.
    #[test]
    fn class_token_only_block_matches_the_whole_block() {
        for layer_scale in [false, true] {
            tch::manual_seed(0);
            let store = nn::VarStore::new(Device::Cpu);
            let block = Block::new(store.root(), 48, 3, 4.0, 0.0, layer_scale);
            // Non-zero biases and LayerScale γ of order 1, so that every parameter shows in the values.
            tch::no_grad(|| {
                for mut variable in store.trainable_variables() {
                    let _ = variable.normal_(0.0, 0.3);
                }
            });
            let x = Tensor::randn([5, 17, 48], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let upstream = Tensor::randn([5, 48], (Kind::Float, Device::Cpu));
            let mut inputs = vec![x.shallow_clone()];
            inputs.extend(store.trainable_variables());
            let value_and_gradients = |class_token: Tensor| {
                let loss = (&class_token * &upstream).sum(Kind::Float);
                (class_token, Tensor::run_backward(&[loss], &inputs, false, false))
            };
            let (whole, whole_gradients) = value_and_gradients(block.forward(&x, true, false).select(1, 0));
            let only = block.forward(&x, true, true);
            assert_eq!(only.size(), [5, 1, 48]);
            let (only, only_gradients) = value_and_gradients(only.select(1, 0));
            let relative = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap();
            assert!(relative(&only, &whole) < 1e-5, "values differ by {}", relative(&only, &whole));
            assert_eq!(only_gradients.len(), whole_gradients.len());
            for (i, (a, b)) in only_gradients.iter().zip(&whole_gradients).enumerate() {
                assert!(f64::try_from(b.abs().max()).unwrap() > 0.0, "gradient {i} is zero: the check would be empty");
                assert!(relative(a, b) < 1e-5, "gradient {i} differs by {}", relative(a, b));
            }
        }
    }
}
