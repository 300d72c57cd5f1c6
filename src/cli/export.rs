//! `lejepa export`: a run's backbone (or any timm-named weights) as a model folder timm and the
//! Hugging Face hub read: model.safetensors, config.json, README.md.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::data_args::DataArgs;
use super::model_args::ModelArgs;
use crate::export::{ModelFolder, timm_architecture};
use crate::models::Arch;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// The model folder to write (created; files already there are replaced).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.model.has_model(), "give --run RUN, or --weights W with --arch A: there is nothing to export");
    let config = args.model.run_config()?;
    let default_data = config.as_ref().map_or("fashion-mnist".to_string(), |c| c.data.clone());
    let dataset = args.data.open(&default_data)?;
    let model = args.model.load(&dataset, false)?;
    let arch_name = args.model.arch.clone().or(config.as_ref().map(|c| c.arch.clone())).context("give --run RUN, or --weights W with --arch A")?;
    let arch = Arch::from_name(&arch_name)?;
    let backbone = &model.encoder.backbone;
    let in_chans = model.crop.mean.len() as i64;
    let img_size = model.crop.global.size as i64;

    let mut provenance = Vec::new();
    match (&args.model.run, &config) {
        (Some(run), Some(c)) => {
            provenance.push(format!("data: `{}`; architecture `{}`, {} channel(s), {} px views", c.data, c.arch, in_chans, img_size));
            provenance.push(format!(
                "recipe: a schedule of {}, batches of {} images × {} views ({} global, {} local), lr {}, weight decay {}, λ {}, projector {:?}",
                c.steps.map_or(format!("{} epochs", c.epochs), |s| format!("{s} steps")),
                c.batch_size * c.grad_accum,
                c.global_views + c.local_views,
                c.global_views,
                c.local_views,
                c.lr,
                c.weight_decay,
                c.lambda,
                c.projector
            ));
            let summary = std::fs::read_to_string(run.join("summary.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(summary) = summary {
                provenance.push(format!("trained {} steps; final loss {:.4} (SIGReg {:.3}, invariance {:.4})", summary["steps"], summary["final_loss"].as_f64().unwrap_or(f64::NAN), summary["final_sigreg"].as_f64().unwrap_or(f64::NAN), summary["final_invariance"].as_f64().unwrap_or(f64::NAN)));
            }
            let probe = std::fs::read_to_string(run.join("final-probe.json")).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(p) = probe {
                let pct = |key: &str| p[key].as_f64().map_or("?".to_string(), |v| format!("{:.2}%", 100.0 * v));
                provenance.push(format!(
                    "frozen linear probe ({} train / {} test images of {}): {} (raw pixels {}, the same network at random init {})",
                    p["train_images"], p["test_images"], c.data, pct("backbone"), pct("raw_pixels"), pct("random_init")
                ));
            }
        }
        _ => provenance.push(format!("weights `{}` (architecture `{arch_name}`), exported by lejepa", args.model.name())),
    }

    let folder = ModelFolder {
        arch,
        arch_name: arch_name.clone(),
        in_chans,
        img_size,
        mean: model.crop.mean.clone(),
        std: model.crop.std.clone(),
        resize: model.crop.eval_resize,
        num_features: backbone.embed_dim(),
        provenance,
    };
    folder.write(&args.out, &model.encoder.backbone_state())?;
    println!("{}: model.safetensors, README.md, lejepa.json{}", args.out.display(), if folder.timm_config().is_some() { ", config.json" } else { "" });
    match timm_architecture(&arch, in_chans, img_size) {
        Some((name, _)) => println!(
            "load it with timm.create_model(\"local-dir:{}\", pretrained=True, num_classes=0) (a {name}); upload the folder to a Hugging Face hub repository for hf-hub:",
            args.out.display()
        ),
        None => println!("timm cannot build {arch_name} from a config: README.md in the folder has the Python lines that build it and load the weights"),
    }
    Ok(())
}
