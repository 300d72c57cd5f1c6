//! `lejepa visualize`: one picture of what a backbone learned. Each row is an image, then the first
//! three principal components of its patch features as RGB (fitted over all rows together), then for a
//! ViT the class token's attention in the last block (mean over heads), optionally the same for the
//! network at random init, then optionally the image's nearest neighbours in the data by embedding.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use rand::SeedableRng;
use rand::seq::index::sample;
use tch::{Device, Kind, Tensor};

use super::data_args::DataArgs;
use super::model_args::{Model, ModelArgs, fit_channels};
use crate::data::Split;
use crate::data::augment::resized_crop;
use crate::data::loader::eval_batch;
use crate::eval::{FeatureKind, features};
use crate::pictures::{grid, pca, tile, unit_columns};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Output PNG. Beside it: <stem>_features.npy (the patch features, N × h·w × D), <stem>_pca.npy
    /// (their projections on the three components, N × h·w × 3) and, for a ViT, <stem>_attention.npy
    /// (the class token's attention per head over itself then the patches, N × heads × (1 + h·w)).
    #[arg(long, default_value = "features.png")]
    out: PathBuf,
    /// Number of images (rows), drawn with --seed from the test split (the training split where there is none).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    images: u16,
    /// Seed of the choice of images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also draw the columns of the same network at random init, for comparison.
    #[arg(long)]
    compare_random: bool,
    /// Show each image's nearest neighbours in the same split (cosine similarity of embeddings; 0: none).
    /// The whole split is embedded for this: minutes for tens of thousands of images on a CPU.
    #[arg(long, default_value_t = 0)]
    neighbours: usize,
    /// Side of each tile in the picture, in pixels.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(8..=1024))]
    tile: u32,
}

/// One network's columns for the chosen images, and the arrays behind them.
struct Columns {
    features: Tensor,
    projected: Tensor,
    attention: Option<Tensor>,
    tiles: Vec<Vec<image::RgbImage>>,
}

fn columns(model: &Model, split: &Split, rows: &[usize], tile_side: u32) -> Result<Columns> {
    let images = Tensor::cat(&rows.iter().map(|&i| eval_batch(split, i..i + 1, &model.crop)).collect::<Result<Vec<_>>>()?, 0);
    let (features, (h, w), attention) = tch::no_grad(|| model.encoder.backbone.patch_features(&images.to_device(model.device)));
    let (features, attention) = (features.to_kind(Kind::Float).to_device(Device::Cpu), attention.map(|a| a.to_device(Device::Cpu)));
    let (n, t, d) = features.size3()?;
    let (projected, _) = pca(&features.reshape([n * t, d]), 3)?;
    let colours = unit_columns(&projected).reshape([n, h, w, 3]);
    let mut tiles = Vec::new();
    for i in 0..n {
        let mut row = vec![tile(&colours.get(i), tile_side)?];
        if let Some(attention) = &attention {
            // Over the patches only (the class token's weight on itself left out), scaled to [0, 1].
            let map = attention.get(i).mean_dim(0, false, Kind::Float).narrow(0, 1, h * w).reshape([h * w, 1]);
            row.push(tile(&unit_columns(&map).reshape([h, w]), tile_side)?);
        }
        tiles.push(row);
    }
    Ok(Columns { features: features.reshape([n, t, d]), projected: projected.reshape([n, t, 3]), attention, tiles })
}

/// The image as shown: its central square at the tile size, without normalisation.
fn image_tile(split: &Split, i: usize, side: u32) -> Result<image::RgbImage> {
    let image = split.image(i)?;
    let square = image.width.min(image.height);
    let (top, left) = ((image.height - square) / 2, (image.width - square) / 2);
    let view = resized_crop(&image, top, left, square, square, side as usize, false);
    let c = image.channels;
    let rgb = Tensor::from_slice(&view).view([c as i64, side as i64, side as i64]).permute([1, 2, 0]);
    let rgb = if c == 1 { rgb.repeat([1, 1, 3]) } else { rgb };
    tile(&rgb, side)
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.model.has_model(), "give --run RUN, or --weights W with --arch A");
    let default_data = args.model.run_config()?.map_or("fashion-mnist".to_string(), |c| c.data);
    let dataset = args.data.open(&default_data)?;
    let split = if dataset.test.is_empty() { &*dataset.train } else { &dataset.test };
    let count = (args.images as usize).min(split.len());
    ensure!(count >= 1, "{}: no images to draw", dataset.spec);
    let mut rows: Vec<usize> = sample(&mut rand_chacha::ChaCha8Rng::seed_from_u64(args.seed), split.len(), count).into_vec();
    rows.sort_unstable();

    let model = args.model.load(&dataset, false)?;
    println!("preprocessing: {}", model.preprocessing());
    let split = fit_channels(split, &model);
    let trained = columns(&model, &split, &rows, args.tile)?;
    let random = if args.compare_random { Some(columns(&args.model.load(&dataset, true)?, &split, &rows, args.tile)?) } else { None };

    let mut picture: Vec<Vec<image::RgbImage>> = Vec::new();
    for (r, &i) in rows.iter().enumerate() {
        let mut row = vec![image_tile(&split, i, args.tile)?];
        row.extend(trained.tiles[r].iter().cloned());
        if let Some(random) = &random {
            row.extend(random.tiles[r].iter().cloned());
        }
        picture.push(row);
    }
    if args.neighbours > 0 {
        let embeddings = features(&model.encoder.backbone, &split, &model.crop, FeatureKind::Embedding, model.device)?;
        let unit = &embeddings / embeddings.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        let queries = unit.index_select(0, &Tensor::from_slice(&rows.iter().map(|&i| i as i64).collect::<Vec<_>>()));
        let k = (args.neighbours + 1).min(split.len()) as i64;
        let (_, nearest) = queries.matmul(&unit.tr()).topk(k, 1, true, true);
        for (r, &i) in rows.iter().enumerate() {
            let found: Vec<i64> = Vec::<i64>::try_from(nearest.get(r as i64))?;
            for j in found.into_iter().filter(|&j| j as usize != i).take(args.neighbours) {
                picture[r].push(image_tile(&split, j as usize, args.tile)?);
            }
        }
    }
    grid(&picture, 4).save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;

    let stem = args.out.with_extension("");
    let beside = |suffix: &str| PathBuf::from(format!("{}_{suffix}.npy", stem.display()));
    crate::npy::write(&trained.features, &beside("features"))?;
    crate::npy::write(&trained.projected, &beside("pca"))?;
    if let Some(attention) = &trained.attention {
        crate::npy::write(attention, &beside("attention"))?;
    }
    let vit = trained.attention.is_some();
    let mut legend = vec!["image", "PCA of patch features (RGB)"];
    if vit {
        legend.push("class-token attention");
    }
    if random.is_some() {
        legend.push("PCA at random init");
        if vit {
            legend.push("attention at random init");
        }
    }
    if args.neighbours > 0 {
        legend.push("nearest neighbours");
    }
    println!("{}: {count} images of {} ({}); columns: {}", args.out.display(), dataset.spec, args.model.name(), legend.join(" | "));
    println!("arrays behind it: {}, {}{}", beside("features").display(), beside("pca").display(), if vit { format!(", {}", beside("attention").display()) } else { String::new() });
    Ok(())
}
