//! LeJEPA multi-crop augmentation with torchvision's semantics, on planar f32 images in [0, 1].
//!
//! Each image gives `global_views` crops of scale 0.3–1 and `local_views` crops of scale 0.05–0.3
//! (paper §6.1 / official README), each then flipped, colour-jittered, maybe grayscaled, blurred and
//! solarized, and normalised. The views of sample i in epoch e depend only on (seed, e, i).

use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::Image;
use super::pil::{TimmResize, timm_eval_view};

/// The recipe of one kind of view (global or local). Probabilities are per view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewRecipe {
    /// Output side in pixels (square views).
    pub size: usize,
    /// RandomResizedCrop area fraction range and aspect-ratio range.
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
    pub flip_p: f64,
    /// Vertical flips (valid for cells, tissue, satellite and sky images; none in the paper's recipe).
    #[serde(default)]
    pub vflip_p: f64,
    /// ColorJitter, applied with probability jitter_p in a random order of its four parts
    /// (saturation and hue only for colour images).
    pub jitter_p: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    pub grayscale_p: f64,
    /// GaussianBlur with a fixed odd kernel and σ drawn uniformly from blur_sigma.
    pub blur_p: f64,
    pub blur_sigma: [f64; 2],
    pub blur_kernel: usize,
    /// RandomSolarize at threshold 128/255.
    pub solarize_p: f64,
}

impl ViewRecipe {
    /// The official README's recipe (identical for global and local views but for the crop).
    pub fn lejepa(size: usize, scale: [f64; 2]) -> ViewRecipe {
        ViewRecipe {
            size,
            scale,
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            vflip_p: 0.0,
            jitter_p: 0.8,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            grayscale_p: 0.2,
            blur_p: 0.5,
            blur_sigma: [0.1, 2.0],
            blur_kernel: blur_kernel_for(size),
            solarize_p: 0.2,
        }
    }
}

/// All views of one sample, and the normalisation that ends every view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiCrop {
    pub global_views: usize,
    pub global: ViewRecipe,
    pub local_views: usize,
    pub local: ViewRecipe,
    /// Per-channel normalisation (the dataset's own statistics by default).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Evaluation of weights trained through timm's transforms: its resize and centre crop, exactly.
    /// None (lejepa's own): the central square resized to the global view size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_resize: Option<TimmResize>,
}

/// The blur kernel for a view of `size` px: a tenth of the view, odd (DINO's 23 taps at 224 px), and at
/// least 3 taps, so that small views are blurred too (torchvision blurs a 12-px view with 3).
pub fn blur_kernel_for(size: usize) -> usize {
    ((size / 10) | 1).max(3)
}

/// Rounds to the nearest positive multiple of `multiple` (a ViT's patch size).
fn round_to_multiple(size: f64, multiple: usize) -> usize {
    ((size / multiple as f64).round() as usize).max(1) * multiple
}

/// The paper's local view size for a global size: 3/7 of it (224 → 96, 28 → 12), a multiple of `multiple_of`.
pub fn local_size_for(global_size: usize, multiple_of: usize) -> usize {
    round_to_multiple(global_size as f64 * 3.0 / 7.0, multiple_of)
}

impl MultiCrop {
    /// The paper's multi-crop for images of side `image_size`: global views at that size (at most
    /// 224), local views at 3/7 of it (224 → 96, 28 → 12), both multiples of `multiple_of`.
    pub fn lejepa(image_size: usize, multiple_of: usize, global_views: usize, local_views: usize) -> MultiCrop {
        let global = round_to_multiple(image_size.min(224) as f64, multiple_of);
        let local = local_size_for(global, multiple_of);
        MultiCrop {
            global_views,
            global: ViewRecipe::lejepa(global, [0.3, 1.0]),
            local_views,
            local: ViewRecipe::lejepa(local, [0.05, 0.3]),
            mean: vec![0.5],
            std: vec![0.5],
            eval_resize: None,
        }
    }

    /// MINIMAL.md: `views` same-size views, RandomResizedCrop scale 0.08–1, ColorJitter(0.8, 0.8, 0.8,
    /// 0.2) p 0.8, grayscale 0.2, blur kernel 7 p 0.5, solarize 0.2, flip; every view is "global".
    pub fn minimal(image_size: usize, multiple_of: usize, views: usize) -> MultiCrop {
        let size = round_to_multiple(image_size.min(224) as f64, multiple_of);
        let recipe = ViewRecipe {
            brightness: 0.8,
            contrast: 0.8,
            saturation: 0.8,
            hue: 0.2,
            blur_kernel: 7,
            ..ViewRecipe::lejepa(size, [0.08, 1.0])
        };
        MultiCrop { global_views: views, global: recipe.clone(), local_views: 0, local: recipe, mean: vec![0.5], std: vec![0.5], eval_resize: None }
    }

    pub fn views(&self) -> usize {
        self.global_views + self.local_views
    }

    /// The shorter image side these views need at full detail: the smallest crop (least area, most
    /// extreme aspect ratio) of an image of that side still holds the view's size in pixels, and the
    /// evaluation view (the central square) holds the global size. Image files are decoded no
    /// smaller than this (crops keep their area fractions of the original).
    pub fn decode_side(&self) -> usize {
        let need = |recipe: &ViewRecipe| {
            let squeeze = recipe.ratio[0].min(1.0 / recipe.ratio[1]).min(1.0);
            (recipe.size as f64 / (recipe.scale[0] * squeeze).sqrt()).ceil() as usize
        };
        let mut side = self.global.size.max(need(&self.global));
        if self.local_views > 0 {
            side = side.max(need(&self.local));
        }
        side
    }

    /// Checks a recipe read from a file: what would otherwise fail later inside a loader thread.
    pub fn validate(&self) -> Result<(), String> {
        if self.global_views == 0 {
            return Err("global_views must be at least 1".into());
        }
        for (kind, recipe) in [("global", &self.global), ("local", &self.local)] {
            let bad = |what: String| Err(format!("[{kind}] {what}"));
            if recipe.size == 0 {
                return bad("size must be positive".into());
            }
            for (name, p) in [("flip_p", recipe.flip_p), ("vflip_p", recipe.vflip_p), ("jitter_p", recipe.jitter_p), ("grayscale_p", recipe.grayscale_p), ("blur_p", recipe.blur_p), ("solarize_p", recipe.solarize_p)] {
                if !(0.0..=1.0).contains(&p) {
                    return bad(format!("{name} = {p} is not a probability in [0, 1]"));
                }
            }
            let [lo, hi] = recipe.scale;
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                return bad(format!("scale = [{lo}, {hi}] must satisfy 0 < low ≤ high ≤ 1 (area fractions)"));
            }
            let [lo, hi] = recipe.ratio;
            if !(lo > 0.0 && lo <= hi) {
                return bad(format!("ratio = [{lo}, {hi}] must satisfy 0 < low ≤ high"));
            }
            let [lo, hi] = recipe.blur_sigma;
            if recipe.blur_p > 0.0 && !(lo > 0.0 && lo <= hi) {
                return bad(format!("blur_sigma = [{lo}, {hi}] must satisfy 0 < low ≤ high"));
            }
            if recipe.blur_kernel % 2 == 0 {
                return bad(format!("blur_kernel = {} must be odd", recipe.blur_kernel));
            }
            for (name, v) in [("brightness", recipe.brightness), ("contrast", recipe.contrast), ("saturation", recipe.saturation)] {
                if !(v >= 0.0) {
                    return bad(format!("{name} = {v} must be non-negative"));
                }
            }
            if !(0.0..=0.5).contains(&recipe.hue) {
                return bad(format!("hue = {} must be in [0, 0.5]", recipe.hue));
            }
        }
        if self.std.iter().any(|&s| !(s > 0.0)) {
            return Err(format!("std = {:?} must be positive", self.std));
        }
        Ok(())
    }

    /// Global views then local views of one image, each planar `[C, size, size]`, normalised.
    pub fn make_views(&self, image: &Image, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        let recipes = std::iter::repeat_n(&self.global, self.global_views).chain(std::iter::repeat_n(&self.local, self.local_views));
        recipes.map(|recipe| self.normalize(augment(image, recipe, rng), image.channels)).collect()
    }

    /// The evaluation view: the central square resized to the global size (or timm's resize and crop), normalised.
    pub fn eval_view(&self, image: &Image) -> Vec<f32> {
        if let Some(resize) = self.eval_resize {
            return self.normalize(timm_eval_view(image, self.global.size, resize), image.channels);
        }
        let side = image.width.min(image.height);
        let (top, left) = ((image.height - side) / 2, (image.width - side) / 2);
        let view = resized_crop(image, top, left, side, side, self.global.size, false);
        self.normalize(view, image.channels)
    }

    fn normalize(&self, mut view: Vec<f32>, channels: usize) -> Vec<f32> {
        let plane = view.len() / channels;
        for (c, values) in view.chunks_exact_mut(plane).enumerate() {
            let (mean, std) = (self.mean[c.min(self.mean.len() - 1)], self.std[c.min(self.std.len() - 1)]);
            values.iter_mut().for_each(|v| *v = (*v - mean) / std);
        }
        view
    }
}

/// The generator of sample `index` in `epoch`: a pure function of (seed, epoch, index), so views do
/// not depend on thread count or order.
pub fn view_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Bit 62 keeps these streams apart from SIGReg's directions (stream = step) and the epoch orders (the top ones).
    rng.set_stream((1 << 62) | (epoch << 40) | index);
    rng
}

/// torchvision's `RandomResizedCrop.get_params`: (top, left, height, width) of the crop.
pub fn crop_box(height: usize, width: usize, scale: [f64; 2], ratio: [f64; 2], rng: &mut impl Rng) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let log_ratio = [ratio[0].ln(), ratio[1].ln()];
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = rng.random_range(log_ratio[0]..=log_ratio[1]).exp();
        let w = (target_area * aspect).sqrt().round() as usize;
        let h = (target_area / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    // Fallback: the central crop with the aspect ratio clamped into range.
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio[0] {
        ((width as f64 / ratio[0]).round() as usize, width)
    } else if in_ratio > ratio[1] {
        (height, (height as f64 * ratio[1]).round() as usize)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// One view: crop, resize, flip, jitter, grayscale, blur, solarize (torchvision's order).
fn augment(image: &Image, recipe: &ViewRecipe, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (top, left, h, w) = crop_box(image.height, image.width, recipe.scale, recipe.ratio, rng);
    let flip = rng.random_bool(recipe.flip_p);
    let mut view = resized_crop(image, top, left, h, w, recipe.size, flip);
    let (c, size) = (image.channels, recipe.size);
    // Drawn only where the recipe has vertical flips, so that other recipes draw exactly what they did before.
    if recipe.vflip_p > 0.0 && rng.random_bool(recipe.vflip_p) {
        flip_rows(&mut view, c, size);
    }
    if rng.random_bool(recipe.jitter_p) {
        color_jitter(&mut view, c, recipe, rng);
    }
    if rng.random_bool(recipe.grayscale_p) && c == 3 {
        to_grayscale(&mut view);
    }
    if rng.random_bool(recipe.blur_p) {
        let sigma = rng.random_range(recipe.blur_sigma[0]..=recipe.blur_sigma[1]);
        gaussian_blur(&mut view, c, size, recipe.blur_kernel, sigma);
    }
    if rng.random_bool(recipe.solarize_p) {
        view.iter_mut().filter(|v| **v >= 128.0 / 255.0).for_each(|v| *v = 1.0 - *v);
    }
    view
}

/// Antialiased bilinear resampling weights (PyTorch's `_upsample_bilinear2d_aa`, i.e. PIL's):
/// for each output index, the first input index and the normalised weights from there.
fn resample_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f64 / out_size as f64;
    let (support, inv_scale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    (0..out_size)
        .map(|o| {
            let center = scale * (o as f64 + 0.5);
            let start = ((center - support + 0.5).trunc().max(0.0)) as usize;
            let end = ((center + support + 0.5).trunc() as usize).min(in_size);
            let weights: Vec<f64> = (start..end).map(|j| (1.0 - ((j as f64 - center + 0.5) * inv_scale).abs()).max(0.0)).collect();
            let total: f64 = weights.iter().sum();
            (start, weights.iter().map(|w| (w / total) as f32).collect())
        })
        .collect()
}

/// The box (top, left, h, w) of an 8-bit HWC image resized to `size`×`size`, optionally mirrored,
/// as planar f32 `[C, size, size]` in [0, 1].
pub fn resized_crop(image: &Image, top: usize, left: usize, h: usize, w: usize, size: usize, flip: bool) -> Vec<f32> {
    let c = image.channels;
    let rows = resample_weights(h, size);
    let cols = resample_weights(w, size);
    // Vertical pass: [C, size, w].
    let mut tmp = vec![0f32; c * size * w];
    for (r, (start, weights)) in rows.iter().enumerate() {
        for (k, &weight) in weights.iter().enumerate() {
            let src_row = &image.pixels[((top + start + k) * image.width + left) * c..][..w * c];
            for (x, pixel) in src_row.chunks_exact(c).enumerate() {
                for ch in 0..c {
                    tmp[(ch * size + r) * w + x] += weight * pixel[ch] as f32;
                }
            }
        }
    }
    // Horizontal pass: [C, size, size], scaled to [0, 1].
    let mut out = vec![0f32; c * size * size];
    for ch in 0..c {
        for r in 0..size {
            let src = &tmp[(ch * size + r) * w..][..w];
            let dst = &mut out[(ch * size + r) * size..][..size];
            for (o, (start, weights)) in cols.iter().enumerate() {
                let value: f32 = weights.iter().zip(&src[*start..]).map(|(a, b)| a * b).sum();
                dst[if flip { size - 1 - o } else { o }] = (value / 255.0).clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// ITU-R 601 luma of a planar RGB view, per pixel.
fn luma(view: &[f32]) -> Vec<f32> {
    let plane = view.len() / 3;
    (0..plane).map(|i| 0.299 * view[i] + 0.587 * view[plane + i] + 0.114 * view[2 * plane + i]).collect()
}

fn to_grayscale(view: &mut [f32]) {
    let gray = luma(view);
    for channel in view.chunks_exact_mut(gray.len()) {
        channel.copy_from_slice(&gray);
    }
}

fn blend_toward(view: &mut [f32], factor: f32, target: impl Fn(usize) -> f32) {
    view.iter_mut().enumerate().for_each(|(i, v)| *v = (factor * *v + (1.0 - factor) * target(i)).clamp(0.0, 1.0));
}

/// torchvision's ColorJitter: factors drawn first, the four adjustments applied in random order.
/// Mirrors a planar `[C, size, size]` view top to bottom.
fn flip_rows(view: &mut [f32], channels: usize, size: usize) {
    for plane in view.chunks_exact_mut(size * size).take(channels) {
        for row in 0..size / 2 {
            let (top, bottom) = plane.split_at_mut((size - 1 - row) * size);
            top[row * size..(row + 1) * size].swap_with_slice(&mut bottom[..size]);
        }
    }
}

fn color_jitter(view: &mut [f32], channels: usize, recipe: &ViewRecipe, rng: &mut ChaCha8Rng) {
    let factor = |strength: f64, rng: &mut ChaCha8Rng| rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength) as f32;
    let brightness = factor(recipe.brightness, rng);
    let contrast = factor(recipe.contrast, rng);
    let saturation = factor(recipe.saturation, rng);
    let hue = rng.random_range(-recipe.hue..=recipe.hue) as f32;
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    let plane = view.len() / channels;
    for op in order {
        match op {
            0 => view.iter_mut().for_each(|v| *v = (*v * brightness).clamp(0.0, 1.0)),
            1 => {
                let gray = if channels == 3 { luma(view) } else { view.to_vec() };
                let mean = gray.iter().sum::<f32>() / gray.len() as f32;
                blend_toward(view, contrast, |_| mean);
            }
            2 if channels == 3 => {
                let gray = luma(view);
                blend_toward(view, saturation, |i| gray[i % plane]);
            }
            3 if channels == 3 && hue != 0.0 => shift_hue(view, hue),
            _ => {}
        }
    }
}

fn shift_hue(view: &mut [f32], shift: f32) {
    let plane = view.len() / 3;
    for i in 0..plane {
        let (r, g, b) = (view[i], view[plane + i], view[2 * plane + i]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let delta = max - min;
        if delta <= 0.0 {
            continue; // gray pixel: hue undefined, unchanged
        }
        let h = if max == r { ((g - b) / delta).rem_euclid(6.0) } else if max == g { (b - r) / delta + 2.0 } else { (r - g) / delta + 4.0 } / 6.0;
        let h = (h + shift).rem_euclid(1.0) * 6.0;
        let (s, v) = (delta / max, max);
        let sector = h.floor();
        let f = h - sector;
        let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let (r, g, b) = match sector as i32 % 6 {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
        view[i] = r;
        view[plane + i] = g;
        view[2 * plane + i] = b;
    }
}

/// Reflect-padded index (torchvision pads with "reflect": … 2 1 | 0 1 2 … n−1 | n−2 …).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Separable Gaussian blur with a fixed odd kernel, reflect padding.
fn gaussian_blur(view: &mut [f32], channels: usize, size: usize, kernel: usize, sigma: f64) {
    let half = (kernel / 2) as isize;
    let weights: Vec<f32> = (-half..=half).map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp() as f32).collect();
    let total: f32 = weights.iter().sum();
    let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
    // Each output sums its taps in kernel order, as a per-pixel loop would (the same floats), but a whole row at
    // a time over reflect-padded indices, so that the inner loops run over contiguous memory and vectorise.
    let source: Vec<usize> = (-half..size as isize + half).map(|i| reflect(i, size)).collect(); // padded j → pixel
    let mut padded = vec![0f32; size + 2 * half as usize];
    let mut tmp = vec![0f32; size * size];
    for plane in view.chunks_exact_mut(size * size).take(channels) {
        for y in 0..size {
            let row = &plane[y * size..][..size];
            for (p, &i) in padded.iter_mut().zip(&source) {
                *p = row[i];
            }
            let out = &mut tmp[y * size..][..size];
            out.fill(0.0);
            for (k, &w) in weights.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&padded[k..k + size]) {
                    *o += w * v;
                }
            }
        }
        for y in 0..size {
            let out = &mut plane[y * size..][..size];
            out.fill(0.0);
            for (k, &w) in weights.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&tmp[source[y + k] * size..][..size]) {
                    *o += w * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipe with vertical flips only (p = 1) gives the crop mirrored top to bottom, every channel.
    #[test]
    fn vertical_flips_mirror_rows() {
        let image = Image { width: 4, height: 4, channels: 2, pixels: (0..32).map(|v| v as u8 * 7).collect() };
        let mut recipe = ViewRecipe::lejepa(4, [1.0, 1.0]);
        (recipe.ratio, recipe.flip_p, recipe.jitter_p, recipe.grayscale_p, recipe.blur_p, recipe.solarize_p) = ([1.0, 1.0], 0.0, 0.0, 0.0, 0.0, 0.0);
        let plain = augment(&image, &recipe, &mut view_rng(0, 0, 0));
        recipe.vflip_p = 1.0;
        let flipped = augment(&image, &recipe, &mut view_rng(0, 0, 0));
        for c in 0..2 {
            for y in 0..4 {
                for x in 0..4 {
                    assert_eq!(flipped[(c * 4 + y) * 4 + x], plain[(c * 4 + 3 - y) * 4 + x], "channel {c} row {y}");
                }
            }
        }
        assert_ne!(flipped, plain);
    }

    /// DINO's 23 taps at 224 px, and small views blurred with 3 taps as torchvision blurs them (never 1: no blur).
    #[test]
    fn blur_kernels_are_a_tenth_of_the_view_and_at_least_three_taps() {
        let kernels: Vec<usize> = [224, 96, 28, 12, 8].into_iter().map(blur_kernel_for).collect();
        assert_eq!(kernels, [23, 9, 3, 3, 3]);
        let recipe = MultiCrop::lejepa(28, 1, 2, 4);
        assert_eq!((recipe.global.blur_kernel, recipe.local.blur_kernel), (3, 3));
    }

    /// Sample k's views in epoch 0 and SIGReg's directions at step k (stream k of the same seed) are drawn
    /// from different random streams.
    #[test]
    fn view_streams_are_not_the_directions_streams() {
        for k in [0u64, 1, 7] {
            let mut directions = ChaCha8Rng::seed_from_u64(0);
            directions.set_stream(k);
            let mut views = view_rng(0, 0, k);
            let (a, b): (Vec<u64>, Vec<u64>) = (0..4).map(|_| (directions.random::<u64>(), views.random::<u64>())).unzip();
            assert_ne!(a, b, "stream {k}");
        }
    }

    fn ramp(width: usize, height: usize) -> Image {
        let pixels = (0..height).flat_map(|_| (0..width).map(move |x| ((x * 255) / (width - 1)) as u8)).collect();
        Image { width, height, channels: 1, pixels }
    }

    /// The row-at-a-time blur gives exactly the floats of the per-pixel definition (taps summed in kernel order).
    #[test]
    fn blur_equals_the_per_pixel_definition_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (size, kernel, sigma) in [(28, 3, 0.7), (96, 9, 1.9), (224, 23, 0.3), (224, 23, 2.0), (12, 1, 1.0)] {
            let view: Vec<f32> = (0..3 * size * size).map(|_| rng.random::<f32>()).collect();
            let mut fast = view.clone();
            gaussian_blur(&mut fast, 3, size, kernel, sigma);
            let half = (kernel / 2) as isize;
            let weights: Vec<f32> = (-half..=half).map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp() as f32).collect();
            let total: f32 = weights.iter().sum();
            let weights: Vec<f32> = weights.iter().map(|w| w / total).collect();
            for plane in 0..3 {
                let p = &view[plane * size * size..][..size * size];
                let tmp: Vec<f32> = (0..size * size)
                    .map(|i| weights.iter().enumerate().map(|(k, w)| w * p[(i / size) * size + reflect((i % size) as isize + k as isize - half, size)]).sum())
                    .collect();
                for i in 0..size * size {
                    let slow: f32 = weights.iter().enumerate().map(|(k, w)| w * tmp[reflect((i / size) as isize + k as isize - half, size) * size + i % size]).sum();
                    assert_eq!(fast[plane * size * size + i].to_bits(), slow.to_bits(), "size {size}, kernel {kernel}, pixel {i}");
                }
            }
        }
    }

    #[test]
    fn crop_boxes_follow_torchvision_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..2000 {
            let (top, left, h, w) = crop_box(40, 60, [0.05, 0.3], [0.75, 4.0 / 3.0], &mut rng);
            assert!(top + h <= 40 && left + w <= 60 && h > 0 && w > 0);
            let area = (h * w) as f64 / 2400.0;
            // Rounding of w and h moves the area a little outside the requested range.
            assert!(area > 0.03 && area < 0.34, "area fraction {area}");
        }
        // A 1×100 strip cannot hold any crop of ratio 3/4–4/3 and scale ≥ 0.3: the fallback clamps the ratio.
        assert_eq!(crop_box(1, 100, [0.3, 1.0], [0.75, 4.0 / 3.0], &mut rng), (0, 49, 1, 1));
    }

    #[test]
    fn resizing_matches_pytorchs_antialiased_bilinear() {
        let flat = Image { width: 30, height: 20, channels: 3, pixels: vec![200; 30 * 20 * 3] };
        let out = resized_crop(&flat, 2, 3, 15, 25, 7, false);
        assert!(out.iter().all(|v| (v - 200.0 / 255.0).abs() < 1e-6));
        // A random crop, shrunk and enlarged, against libtorch's _upsample_bilinear2d_aa.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let pixels: Vec<u8> = (0..40 * 50 * 3).map(|_| rng.random()).collect();
        let image = Image { width: 50, height: 40, channels: 3, pixels: pixels.clone() };
        let hwc = tch::Tensor::from_slice(&pixels).view([40, 50, 3]).to_kind(tch::Kind::Float) / 255.0;
        for (top, left, h, w, size) in [(3, 7, 31, 40, 12), (10, 2, 9, 6, 16), (0, 0, 40, 50, 40)] {
            let crop = hwc.narrow(0, top, h).narrow(1, left, w).permute([2, 0, 1]).unsqueeze(0);
            let reference = crop.internal_upsample_bilinear2d_aa([size, size], false, None, None).clamp(0.0, 1.0);
            let reference = Vec::<f32>::try_from(reference.flatten(0, -1)).unwrap();
            let ours = resized_crop(&image, top as usize, left as usize, h as usize, w as usize, size as usize, false);
            let diff = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "crop {h}x{w} -> {size}: max difference {diff}");
        }
    }

    #[test]
    fn flipping_mirrors_columns() {
        let image = ramp(16, 16);
        let plain = resized_crop(&image, 0, 0, 16, 16, 16, false);
        let mirrored = resized_crop(&image, 0, 0, 16, 16, 16, true);
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(plain[y * 16 + x], mirrored[y * 16 + 15 - x]);
            }
        }
    }

    #[test]
    fn hue_shift_of_a_full_turn_is_the_identity_and_a_third_rotates_channels() {
        let view = vec![0.9, 0.2, 0.1, 0.4, 0.3, 0.6]; // two pixels, planar: (0.9, 0.1, 0.3), (0.2, 0.4, 0.6)
        let mut full = view.clone();
        shift_hue(&mut full, 1.0);
        assert!(full.iter().zip(&view).all(|(a, b)| (a - b).abs() < 1e-5));
        let mut third = view.clone();
        shift_hue(&mut third, 1.0 / 3.0); // 120°: (r, g, b) → (b, r, g)
        let expected = [0.3, 0.6, 0.9, 0.2, 0.1, 0.4]; // planar: R of both pixels, then G, then B
        assert!(third.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-5), "{third:?}");
    }

    #[test]
    fn blur_keeps_constants_and_mean() {
        let mut view: Vec<f32> = (0..64).map(|i| (i % 8) as f32 / 8.0).collect();
        let before: f32 = view.iter().sum();
        gaussian_blur(&mut view, 1, 8, 5, 1.0);
        let after: f32 = view.iter().sum();
        assert!((before - after).abs() / before < 0.05);
        let mut constant = vec![0.3f32; 3 * 16];
        gaussian_blur(&mut constant, 3, 4, 3, 2.0);
        assert!(constant.iter().all(|v| (v - 0.3).abs() < 1e-6));
    }

    #[test]
    fn views_depend_only_on_seed_epoch_and_index() {
        let image = ramp(28, 28);
        let crop = MultiCrop::lejepa(28, 4, 2, 6);
        let a = crop.make_views(&image, &mut view_rng(7, 3, 11));
        let b = crop.make_views(&image, &mut view_rng(7, 3, 11));
        let c = crop.make_views(&image, &mut view_rng(7, 4, 11));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 8);
        assert_eq!(a[0].len(), 28 * 28);
        assert_eq!(a[7].len(), 12 * 12);
    }
}
