//! `lejepa pretrain`: with no arguments, the cpu-small preset on Fashion-MNIST. With `--nodes N`
//! (or torchrun's WORLD_SIZE) it is one of N data-parallel processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::distributed::{Launch, ProcessGroup};
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
    /// Distributed: number of processes in the run, one per device (default: $WORLD_SIZE, else 1).
    #[arg(long)]
    nodes: Option<usize>,
    /// Distributed: this process's rank, 0 … nodes−1 (default: $RANK). Rank 0 writes the run directory.
    #[arg(long)]
    rank: Option<usize>,
    /// Distributed: address of rank 0, where the group meets (default: $MASTER_ADDR, else 127.0.0.1).
    #[arg(long)]
    master_addr: Option<String>,
    /// Distributed: a free TCP port on rank 0's machine (default: $MASTER_PORT, else 29500).
    #[arg(long)]
    master_port: Option<u16>,
    /// Distributed: seconds to wait for the others (start-up, each collective) before giving up.
    #[arg(long, default_value_t = 300)]
    dist_timeout: u64,
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
    let launch = Launch::resolve(
        args.nodes, args.rank, args.master_addr.clone(), args.master_port, config.device.starts_with("cuda"),
        Duration::from_secs(args.dist_timeout),
    )?;
    let group = match &launch {
        Some(launch) => {
            eprintln!("rank {} of {}: joining the {} group at {}:{}", launch.rank, launch.world, launch.backend, launch.master_addr, launch.master_port);
            // A collective that fails inside a model's forward (SyncBatchNorm) panics: print it as
            // the one-line error it is, not as a crash report.
            std::panic::set_hook(Box::new(|info| {
                let message = info.payload().downcast_ref::<String>().map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("panic");
                eprintln!("error: {message}");
            }));
            Some(Arc::new(ProcessGroup::join(launch, crate::train::parse_device(&config.device)?)?))
        }
        None => None,
    };
    let leader = group.as_ref().is_none_or(|g| g.rank == 0);
    let dataset = args.config.data.open(&config.data)?;
    if leader {
        eprintln!(
            "pretraining {} on {} ({} training images, {} classes), λ {}, batch {} × {} views{}",
            config.arch,
            dataset.spec,
            dataset.train.len(),
            dataset.classes.len(),
            config.lambda,
            config.batch_size,
            config.global_views + config.local_views,
            group.as_ref().map_or(String::new(), |g| format!(" per process, {} processes", g.world)),
        );
    }
    if leader && config.precision == "bf16" && config.device == "cpu" {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !cpuinfo.is_empty() && !crate::autocast::cpu_has_bf16_units(&cpuinfo) {
            eprintln!("warning: this CPU has no bf16 units (avx512_bf16 or amx_bf16); libtorch emulates bf16 here, and \
                       --precision bf16 runs about 3× slower than f32 (BENCHMARKS.md); for the cpu-hour preset use \
                       --precision f32 --epochs 4");
        }
    }
    // SIGReg is the Epps–Pulley statistic times the batch N it sees, the invariance term a mean: their balance is
    // set by about N·λ, not λ (RESULTS.md, "λ is a weight per batch size": at N·λ 0.64 the projector's outputs
    // stayed on one or two directions; at 2.56, from batch 128 or 512 alike, they spread).
    let sigreg_batch = config.batch_size * group.as_ref().map_or(1, |g| g.world);
    let balance = sigreg_batch as f64 * config.lambda;
    if leader && balance < 1.0 {
        eprintln!("warning: N·λ = {balance:.2} (SIGReg's batch {sigreg_batch} × λ {}) is below 1: SIGReg's weight against \
                   the invariance term is about N·λ, and this project's runs at N·λ 0.64 narrowed the embedding to one or \
                   two directions; raise λ as the batch shrinks (docs/configuration.md, \"Choosing λ with the batch size\")", config.lambda);
    }
    let (run_dir, resume) = match &args.resume {
        Some(dir) => (dir.clone(), true),
        None => {
            // Rank 0 creates the run directory; the others learn its name (they never write to it).
            let created = if leader { Some(new_run_dir(&config.out, &config.arch)?) } else { None };
            match &group {
                Some(g) => (PathBuf::from(g.share_string("run_dir", created.as_ref().map(|d| d.to_str().unwrap_or_default()))?), false),
                None => (created.unwrap(), false),
            }
        }
    };
    let summary = pretrain(&config, &run_dir, resume, &dataset, group.as_ref())?;
    if !leader {
        return Ok(());
    }
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
