//! Pictures of what a backbone learned, as in the DINOv2 and LeJEPA papers' figures: the first three
//! principal components of the patch features as RGB (fitted over all the images shown at once, so that
//! one colour means one kind of part across images), the class token's attention, nearest neighbours.

use anyhow::{Result, ensure};
use image::{Rgb, RgbImage};
use tch::{Kind, Tensor};

/// Principal component analysis of the rows of `x` (`[M, D]`): the projections of the centred rows on
/// the first `k` components (`[M, k]`, by decreasing variance), and the components (`[k, D]`).
pub fn pca(x: &Tensor, k: i64) -> Result<(Tensor, Tensor)> {
    let (m, d) = x.size2()?;
    ensure!(m.min(d) >= k, "a PCA of {m} feature vectors of dimension {d} cannot give {k} components (draw more images, or give a larger --img-size)");
    let x = x.to_kind(Kind::Double);
    let centred = &x - x.mean_dim(0, true, Kind::Double);
    let (_, _, v) = centred.svd(true, true); // centred = U·diag(S)·Vᵀ, S decreasing
    let components = v.narrow(1, 0, k).tr();
    Ok((centred.matmul(&components.tr()).to_kind(Kind::Float), components.to_kind(Kind::Float)))
}

/// Each column of `x` (`[M, k]`) scaled to [0, 1] over all rows (a constant column gives 0.5).
pub fn unit_columns(x: &Tensor) -> Tensor {
    let low = x.amin(0, true);
    let range = x.amax(0, true) - &low;
    let scaled = (x - &low) / range.clamp_min(1e-12);
    scaled.where_self(&range.gt(1e-12), &(x.zeros_like() + 0.5))
}

/// A `[h, w, 3]` (RGB) or `[h, w]` (one value, drawn with a colour map) tensor of values in [0, 1],
/// drawn as a `tile`×`tile` square (nearest neighbour: each feature location stays a visible block).
pub fn tile(values: &Tensor, tile: u32) -> Result<RgbImage> {
    let (h, w) = (values.size()[0] as u32, values.size()[1] as u32);
    let rgb = values.dim() == 3;
    let flat = Vec::<f32>::try_from(values.to_kind(Kind::Float).contiguous().flatten(0, -1))?;
    Ok(RgbImage::from_fn(tile, tile, |x, y| {
        let (r, c) = ((y * h / tile) as usize, (x * w / tile) as usize);
        if rgb {
            let i = (r * w as usize + c) * 3;
            Rgb([byte(flat[i]), byte(flat[i + 1]), byte(flat[i + 2])])
        } else {
            colour_map(flat[r * w as usize + c])
        }
    }))
}

fn byte(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Viridis, from dark blue (0) through green to yellow (1), linearly between five of its stops.
pub fn colour_map(v: f32) -> Rgb<u8> {
    const STOPS: [[f32; 3]; 5] = [[68., 1., 84.], [59., 82., 139.], [33., 145., 140.], [94., 201., 98.], [253., 231., 37.]];
    let t = v.clamp(0.0, 1.0) * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f32;
    let mix = |c: usize| (STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

/// Tiles laid out in rows with a white gap between them (rows may have different lengths).
pub fn grid(rows: &[Vec<RgbImage>], gap: u32) -> RgbImage {
    let tile = rows.iter().flatten().map(|t| t.width()).max().unwrap_or(1);
    let columns = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let (width, height) = (gap + columns * (tile + gap), gap + rows.len() as u32 * (tile + gap));
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, t) in row.iter().enumerate() {
            image::imageops::replace(&mut canvas, t, (gap + c as u32 * (tile + gap)) as i64, (gap + r as u32 * (tile + gap)) as i64);
        }
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn pca_finds_the_directions_of_largest_variance_in_order() {
        // Points spread 10, 3 and 1 along three orthonormal directions (rotated from the axes), tiny noise elsewhere.
        tch::manual_seed(0);
        let (m, d) = (500, 6);
        let basis = Tensor::linalg_qr(&Tensor::randn([d, d], (Kind::Double, Device::Cpu)), "reduced").0.tr(); // rows orthonormal
        let scales = Tensor::from_slice(&[10.0f64, 3.0, 1.0, 0.01, 0.01, 0.01]);
        let coefficients = Tensor::randn([m, d], (Kind::Double, Device::Cpu)) * scales;
        let x = coefficients.matmul(&basis) + 5.0;
        let (projected, components) = pca(&x, 3).unwrap();
        for k in 0..3 {
            let alignment = components.get(k).to_kind(Kind::Double).dot(&basis.get(k)).abs().double_value(&[]);
            assert!(alignment > 0.999, "component {k} is off its direction: |cos| = {alignment}");
        }
        let spread: Vec<f64> = (0..3).map(|k| projected.select(1, k).std(true).double_value(&[])).collect();
        assert!(spread[0] > spread[1] && spread[1] > spread[2], "not by decreasing variance: {spread:?}");
        let mean = projected.mean_dim(0, false, Kind::Double).abs().max().double_value(&[]);
        assert!(mean < 1e-3, "projections of centred rows have mean {mean}");
    }

    #[test]
    fn unit_columns_span_zero_to_one_and_constants_sit_in_the_middle() {
        let x = Tensor::from_slice(&[1.0f32, 5.0, 3.0, 5.0, 2.0, 5.0]).view([3, 2]);
        let u = unit_columns(&x);
        assert_eq!(Vec::<f32>::try_from(u.flatten(0, -1)).unwrap(), vec![0.0, 0.5, 1.0, 0.5, 0.5, 0.5]);
    }
}
