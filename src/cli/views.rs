//! `lejepa views`: a picture of exactly what the model is trained on.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

use crate::data::augment::view_rng;
use crate::cli::config_args::ConfigArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The data and augmentation settings are those of the training config (preset, --config, flags).
    #[command(flatten)]
    config: ConfigArgs,
    /// Output PNG: one row per image, its global views then its local views.
    #[arg(long, default_value = "views.png")]
    out: PathBuf,
    /// Number of images (rows).
    #[arg(long, default_value_t = 8)]
    rows: usize,
    /// Epoch whose views are drawn (with the config's --seed, exactly as in training).
    #[arg(long, default_value_t = 0)]
    epoch: u64,
}

pub fn run(args: Args) -> Result<()> {
    let config = args.config.resolve()?;
    let dataset = args.config.data.open(&config.data)?;
    let (config, _) = args.config.resolve_for(&dataset)?; // the views `pretrain` would draw for these images
    let crop = config.multicrop(&dataset)?;
    let rows = args.rows.min(dataset.train.len());
    ensure!(rows > 0, "no images to draw");
    let (sg, sl) = (crop.global.size, crop.local.size);
    let zoom = 96usize.div_ceil(sg).max(1); // small images drawn large enough to see
    let pad = 2;
    let cell = sg.max(sl) * zoom + pad;
    let width = crop.views() * cell + pad;
    let height = rows * cell + pad;
    let mut canvas = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    let channels = dataset.channels;
    for row in 0..rows {
        let views = crop.make_views(&*dataset.train.image(row)?, &mut view_rng(config.seed, args.epoch, row as u64));
        for (v, view) in views.iter().enumerate() {
            let size = if v < crop.global_views { sg } else { sl };
            let plane = size * size;
            for y in 0..size * zoom {
                for x in 0..size * zoom {
                    let i = (y / zoom) * size + x / zoom;
                    let value = |c: usize| {
                        let c_in = c.min(channels - 1);
                        let v = view[c_in * plane + i] * crop.std[c_in] + crop.mean[c_in];
                        (v.clamp(0.0, 1.0) * 255.0).round() as u8
                    };
                    let (px, py) = (pad + v * cell + x, pad + row * cell + y);
                    canvas.put_pixel(px as u32, py as u32, image::Rgb([value(0), value(1), value(2)]));
                }
            }
        }
    }
    canvas.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}: {rows} images of {}, {} global views ({sg} px) then {} local views ({sl} px) each",
        args.out.display(),
        dataset.spec,
        crop.global_views,
        crop.local_views
    );
    Ok(())
}
