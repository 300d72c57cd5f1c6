//! timm's evaluation transform, to the byte: Pillow's `Image.resize` (separable passes with 22-bit
//! fixed-point weights, each pass rounded to 8 bits), torchvision's shorter-side `Resize` and `CenterCrop`.
//! Weights trained by others (timm, DINOv2) are fed exactly what their evaluation fed them.

use serde::{Deserialize, Serialize};

use super::Image;

/// Pillow's resampling filters that timm's configurations use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    /// The name timm's configurations use (`interpolation`).
    pub fn name(self) -> &'static str {
        match self {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bilinear => 0.0,
            // Pillow's cubic with a = −0.5.
            Filter::Bicubic if x < 1.0 => ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1.0,
            Filter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5,
            Filter::Bicubic => 0.0,
        }
    }
}

/// timm's evaluation resize: the shorter side to ⌊size / crop_pct⌋ with `filter`, then the central
/// `size`×`size` crop (timm's `crop_mode="center"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimmResize {
    pub crop_pct: f64,
    pub filter: Filter,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position: the first input index, and the fixed-point weights of the inputs from there.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C's (int) truncates toward zero
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (xmin..xmax).map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w } * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { w - 0.5 } else { w + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((width, height), filter)` of an 8-bit image: horizontal pass, then vertical.
pub fn resize(image: &Image, width: usize, height: usize, filter: Filter) -> Image {
    let c = image.channels;
    let mut current = image.clone();
    if width != image.width {
        let columns = coefficients(image.width, width, filter);
        let mut pixels = vec![0u8; image.height * width * c];
        for y in 0..image.height {
            let row = &current.pixels[y * image.width * c..][..image.width * c];
            for (x, (start, weights)) in columns.iter().enumerate() {
                for ch in 0..c {
                    let sum = weights.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |s, (k, &w)| s + row[(start + k) * c + ch] as i64 * w as i64);
                    pixels[(y * width + x) * c + ch] = clip8(sum);
                }
            }
        }
        current = Image { width, height: image.height, channels: c, pixels };
    }
    if height != image.height {
        let rows = coefficients(image.height, height, filter);
        let mut pixels = vec![0u8; height * width * c];
        for (y, (start, weights)) in rows.iter().enumerate() {
            for i in 0..width * c {
                let sum = weights.iter().enumerate().fold(1i64 << (PRECISION_BITS - 1), |s, (k, &w)| s + current.pixels[(start + k) * width * c + i] as i64 * w as i64);
                pixels[y * width * c + i] = clip8(sum);
            }
        }
        current = Image { width, height, channels: c, pixels };
    }
    current
}

/// Python's `round` (half to even), as torchvision's `CenterCrop` offsets use it.
fn round_half_even(x: f64) -> usize {
    let r = x.round();
    (if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - 1.0 } else { r }) as usize
}

/// timm's evaluation view of an 8-bit image: planar f32 `[C, size, size]` in [0, 1].
pub fn timm_eval_view(image: &Image, size: usize, resize_with: TimmResize) -> Vec<f32> {
    let short = (size as f64 / resize_with.crop_pct).floor() as usize;
    let (w, h) = (image.width, image.height);
    // torchvision's Resize(short): the shorter side to `short`, the longer in proportion (truncated).
    let (new_w, new_h) = if w <= h { (short, (short as f64 * h as f64 / w as f64) as usize) } else { ((short as f64 * w as f64 / h as f64) as usize, short) };
    let resized = if (new_w, new_h) == (w, h) { image.clone() } else { resize(image, new_w, new_h, resize_with.filter) };
    let top = round_half_even((new_h - size) as f64 / 2.0);
    let left = round_half_even((new_w - size) as f64 / 2.0);
    let c = image.channels;
    let mut out = vec![0f32; c * size * size];
    for y in 0..size {
        for x in 0..size {
            for ch in 0..c {
                out[(ch * size + y) * size + x] = resized.pixels[((top + y) * new_w + left + x) * c + ch] as f32 / 255.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_of_each_output_sum_to_one_in_fixed_point() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (from, to) in [(300, 248), (28, 235), (64, 64), (7, 3)] {
                for (_, weights) in coefficients(from, to, filter) {
                    let total: i64 = weights.iter().map(|&w| w as i64).sum();
                    assert!((total - (1 << PRECISION_BITS)).abs() <= weights.len() as i64, "{filter:?} {from}→{to}: {total}");
                }
            }
        }
    }

    #[test]
    fn a_constant_image_stays_constant_and_halves_round_to_even() {
        let image = Image { width: 9, height: 5, channels: 3, pixels: vec![77; 9 * 5 * 3] };
        let resized = resize(&image, 4, 13, Filter::Bicubic);
        assert_eq!((resized.width, resized.height), (4, 13));
        assert!(resized.pixels.iter().all(|&p| p == 77));
        assert_eq!([0.5, 1.5, 2.5, 3.0].map(round_half_even), [0, 2, 2, 3]);
    }
}
