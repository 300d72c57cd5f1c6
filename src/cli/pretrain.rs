//! `lejepa pretrain`: with no arguments, the cpu-small preset on Fashion-MNIST.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::train::config::{Config, ConfigArgs};
use crate::train::{new_run_dir, pretrain};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Parent folder of run directories (default: runs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (its config.toml, then any flags).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut config = match &args.resume {
        Some(dir) => {
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the run's config", path.display()))?;
            let saved: Config = toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
            args.config.resolve_over(saved)?
        }
        None => args.config.resolve()?,
    };
    if let Some(out) = &args.out {
        config.out = out.clone();
    }
    let dataset = args.config.data.open(&config.data)?;
    eprintln!(
        "pretraining {} on {} ({} training images, {} classes), λ {}, batch {} × {} views",
        config.arch,
        dataset.spec,
        dataset.train.len(),
        dataset.classes.len(),
        config.lambda,
        config.batch_size,
        config.global_views + config.local_views,
    );
    let summary = match &args.resume {
        Some(dir) => pretrain(&config, dir, true, &dataset)?,
        None => pretrain(&config, &new_run_dir(&config.out, &config.arch)?, false, &dataset)?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("run directory: {}", summary.run_dir.display());
        println!("steps: {}{}", summary.steps, if summary.interrupted { " (interrupted)" } else { "" });
        if let (Some(first), Some(last)) = (summary.first_loss, summary.final_loss) {
            println!("loss: {first:.4} → {last:.4}");
        }
        match summary.probe_accuracy {
            Some(acc) => println!("online linear probe accuracy (test): {:.2}%", 100.0 * acc),
            None => println!("online linear probe: none (no labels)"),
        }
        println!("checkpoint: {}", summary.checkpoint.display());
    }
    Ok(())
}
