//! `lejepa pretrain`: with no arguments, the default preset on Fashion-MNIST. With `--world-size N`
//! (or torchrun's WORLD_SIZE) it is one of N data-parallel processes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::model_args::{Model, ModelArgs};
use super::probe::probe_with_baselines;
use crate::distributed::{Launch, ProcessGroup};
use crate::cli::config_args::ConfigArgs;
use crate::train::config::{ComputeDevice, Config, Precision};
use crate::train::{new_run_dir, pretrain, steps_per_epoch};

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
    /// Print the effective configuration (TOML: preset, fitted to the data, then --config, then flags) and exit.
    #[arg(long)]
    print_config: bool,
    /// Distributed: number of processes in the run, one per device (default: $WORLD_SIZE, else 1). Alias: --nodes.
    #[arg(long, visible_alias = "nodes")]
    world_size: Option<usize>,
    /// Distributed: this process's rank, 0 … world size − 1 (default: $RANK). Rank 0 writes the run directory.
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
    let (mut config, saved) = resolve_config(&args)?;
    let launch = Launch::resolve(
        args.world_size, args.rank, args.master_addr.clone(), args.master_port, config.device.is_cuda(),
        Duration::from_secs(args.dist_timeout),
    )?;
    if let (Some(dir), Some(saved)) = (&args.resume, &saved) {
        let world = launch.as_ref().map_or(1, |l| l.world);
        check_resumable(saved, &config, processes_of(dir)?, world, dir)?;
    }
    let group = join_group(launch.as_ref(), &config)?;
    let leader = group.as_ref().is_none_or(|g| g.rank == 0);
    let world = group.as_ref().map_or(1, |g| g.world);
    let dataset = args.config.data.open(&config.data)?;
    if args.resume.is_none() {
        // The default preset is fitted to the images and the device; say what was chosen.
        let (fitted, reasons) = args.config.resolve_for(&dataset)?;
        config = Config { out: config.out.clone(), ..fitted };
        for reason in reasons.iter().filter(|_| leader && !args.print_config) {
            eprintln!("chose {reason}");
        }
    }
    if args.print_config {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }
    if let Some(group) = &group {
        agree_on_config(group, &config)?;
    }
    if leader {
        announce(&config, &dataset, world);
    }
    // Checked before a run directory is made, so that a refused start leaves nothing behind.
    steps_per_epoch(&config, dataset.train.len(), world)?;
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
    let (final_probe, health) = evaluate_finished_run(&config, &summary, &dataset)?;
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["final_probe"] = serde_json::to_value(&final_probe)?;
        value["health"] = serde_json::to_value(&health)?;
        println!("{value}");
    } else {
        print_report(&config, &summary, &dataset, final_probe.as_ref(), health.as_ref())?;
    }
    Ok(())
}

/// The run's configuration: a resumed run's config.toml with the flags laid over it (and that saved
/// config, to check the changes against), or preset + file + flags.
fn resolve_config(args: &Args) -> Result<(Config, Option<Config>)> {
    let (mut config, saved) = match &args.resume {
        Some(dir) => {
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the run's config", path.display()))?;
            let saved: Config = toml::from_str(&text).with_context(|| format!("{}: invalid config", path.display()))?;
            (args.config.resolve_over(saved.clone())?, Some(saved))
        }
        None => (args.config.resolve()?, None),
    };
    if let Some(out) = &args.out {
        config.out = out.clone();
    }
    Ok((config, saved))
}

/// Joins the process group when this is one of several processes.
fn join_group(launch: Option<&Launch>, config: &Config) -> Result<Option<Arc<ProcessGroup>>> {
    let Some(launch) = launch else { return Ok(None) };
    eprintln!("rank {} of {}: joining the {} group at {}:{}", launch.rank, launch.world, launch.backend, launch.master_addr, launch.master_port);
    // A collective that fails inside a model's forward (SyncBatchNorm) panics: print it as
    // the one-line error it is, not as a crash report.
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload().downcast_ref::<String>().map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied()).unwrap_or("panic");
        eprintln!("error: {message}");
    }));
    Ok(Some(Arc::new(ProcessGroup::join(launch, config.device.into())?)))
}

/// What is about to be trained, and the warnings worth reading before the first step.
fn announce(config: &Config, dataset: &crate::data::Dataset, world: usize) {
    eprintln!(
        "pretraining {} on {} ({} training images, {} classes), λ {}, batch {} × {} views{}",
        config.arch,
        dataset.spec,
        dataset.train.len(),
        dataset.classes.len(),
        config.lambda,
        config.batch_size,
        config.global_views + config.local_views,
        if world > 1 { format!(" per process, {world} processes") } else { String::new() },
    );
    if config.precision == Precision::Bf16 && config.device == ComputeDevice::Cpu {
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
    let sigreg_batch = config.batch_size * world;
    let balance = sigreg_batch as f64 * config.lambda;
    if balance < 1.0 {
        eprintln!("warning: N·λ = {balance:.2} (SIGReg's batch {sigreg_batch} × λ {}) is below 1: SIGReg's weight against \
                   the invariance term is about N·λ, and this project's runs at N·λ 0.64 narrowed the embedding to one or \
                   two directions; raise λ as the batch shrinks (docs/configuration.md, \"Choosing λ with the batch size\")", config.lambda);
    }
}

/// After a finished run: the frozen probe next to raw pixels and random init (labeled data, unless turned
/// off) and the label-free health check, each also written to the run directory.
fn evaluate_finished_run(
    config: &Config, summary: &crate::train::Summary, dataset: &crate::data::Dataset,
) -> Result<(Option<super::probe::Baselines>, Option<crate::diagnostics::Health>)> {
    let labeled = dataset.train.labels.is_some() && dataset.test.labels.is_some() && !dataset.test.is_empty();
    // The trained encoder, loaded once for the probe and the health check.
    let trained_args = ModelArgs::of_run(&summary.run_dir, &config.device.to_string());
    let trained = if summary.interrupted { None } else { Some(trained_args.load(dataset, false)?) };
    let final_probe = match (config.final_probe_images, &trained) {
        (Some(images), Some(trained)) if labeled => {
            let test_images = config.eval_images.unwrap_or(usize::MAX);
            eprintln!("final linear probe: this backbone, raw pixels and random init on {} training and {} test images",
                      images.min(dataset.train.len()), test_images.min(dataset.test.len()));
            let baselines = probe_with_baselines(&trained_args, trained, dataset, images, test_images)?;
            std::fs::write(summary.run_dir.join("final-probe.json"), serde_json::to_string_pretty(&baselines)?)?;
            Some(baselines)
        }
        _ => None,
    };
    // The label-free check, on every finished run: what a user without labels has to go by.
    let health = match &trained {
        Some(trained) => match embedding_health(&trained_args, trained, &summary.run_dir, dataset) {
            Ok(health) => {
                std::fs::write(summary.run_dir.join("health.json"), serde_json::to_string_pretty(&health)?)?;
                Some(health)
            }
            Err(e) => {
                eprintln!("warning: no embedding health check: {e:#}");
                None
            }
        },
        None => None,
    };
    Ok((final_probe, health))
}

/// The run's result for a person: loss, probes with their baselines, health, and what to do next.
fn print_report(
    config: &Config, summary: &crate::train::Summary, dataset: &crate::data::Dataset,
    final_probe: Option<&super::probe::Baselines>, health: Option<&crate::diagnostics::Health>,
) -> Result<()> {
    println!("run directory: {}", summary.run_dir.display());
    println!("steps: {}{}", summary.steps, if summary.interrupted { " (interrupted)" } else { "" });
    if let (Some(first), Some(last)) = (summary.first_loss, summary.final_loss) {
        println!("loss: {first:.4} → {last:.4}");
    }
    if let Some(acc) = summary.probe_accuracy {
        println!("online linear probe accuracy (test): {:.2}%", 100.0 * acc);
    }
    if let Some(b) = final_probe {
        println!("frozen linear probe, top-1 on {} test images (fitted on {} training images, the same probe for each row):", b.test_images, b.train_images);
        println!("  {:<34} {:>6.2}%", format!("this encoder ({})", config.arch), 100.0 * b.backbone);
        println!("  {:<34} {:>6.2}%", "raw pixels", 100.0 * b.raw_pixels);
        println!("  {:<34} {:>6.2}%", "the same network at random init", 100.0 * b.random_init);
    }
    if let Some(h) = health {
        println!(
            "embedding health (no labels needed; {} training images through the projector, health.json):", h.n
        );
        println!("  SIGReg {:.3}   (≈ 1 for N(0, I) outputs, ≈ {:.0} when collapsed; it falls as training goes on)", h.sigreg, crate::diagnostics::collapsed_sigreg(h.n));
        println!("  effective rank {:.1} of {}   (healthy: a good fraction of {}; near 1: collapsed to a line)", h.effective_rank, h.dim, h.dim);
        if let (Some(start), Some(end)) = (h.training_sigreg_start, h.training_sigreg_end) {
            println!("  training SIGReg {start:.3} → {end:.3}");
        }
        for warning in &h.warnings {
            println!("  warning: {warning}");
        }
    }
    let backbone = summary.run_dir.join("backbone.safetensors");
    let size = std::fs::read_to_string(summary.run_dir.join("augment.toml")).ok()
        .and_then(|t| toml::from_str::<crate::data::augment::MultiCrop>(&t).ok()).map_or(224, |c| c.global.size);
    println!("encoder: {} (timm's parameter names); in PyTorch:", backbone.display());
    println!("  import timm, torch, safetensors.torch");
    println!("  {}", crate::models::Arch::from_name(&config.arch)?.timm_python(dataset.channels as i64, size as i64));
    println!("  model.load_state_dict(safetensors.torch.load_file(\"{}\"))", backbone.display());
    println!("next: lejepa probe --run {} --baseline pixels,random   (all labels)", summary.run_dir.display());
    println!("      lejepa embed --run {} --out features.npy          (features for your own use)", summary.run_dir.display());
    println!("      lejepa export --run {} --out my-encoder           (a model folder for timm and the Hugging Face hub)", summary.run_dir.display());
    println!("      lejepa visualize --run {} --compare-random       (a picture of what it learned)", summary.run_dir.display());
    println!("checkpoint: {}", summary.checkpoint.display());
    Ok(())
}

/// Keys a resumed run may change: how long it runs, how often it saves, how it is read and
/// evaluated, and the machine's threads. Any other change would make it another run.
const RESUMABLE_CHANGES: &[&str] =
    &["epochs", "max_steps", "steps", "checkpoint_every", "keep_backbones", "out", "threads", "workers", "eval_images", "final_probe_images"];

/// The configuration keys whose values differ, each as "key (before → after)"; `allowed` keys are listed apart.
fn config_changes(before: &Config, after: &Config, allowed: &[&str]) -> Result<(Vec<String>, Vec<String>)> {
    let (before, after) = (toml::Table::try_from(before)?, toml::Table::try_from(after)?);
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let describe = |keys: Vec<&String>| -> Vec<String> {
        let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
        keys.into_iter().map(|key| format!("{key} ({} → {})", show(before.get(key)), show(after.get(key)))).collect()
    };
    let (allowed, refused): (Vec<&String>, Vec<&String>) =
        keys.into_iter().filter(|key| before.get(*key) != after.get(*key)).partition(|key| allowed.contains(&key.as_str()));
    Ok((describe(allowed), describe(refused)))
}

/// Every rank of a group must train the same run: a rank started with other flags would silently take
/// another step. Each rank publishes its configuration; any difference stops every rank, naming the keys.
fn agree_on_config(group: &crate::distributed::ProcessGroup, config: &Config) -> Result<()> {
    let all = group.gather_strings("config", &toml::to_string(config)?)?;
    for (rank, theirs) in all.iter().enumerate() {
        let theirs: Config = toml::from_str(theirs).with_context(|| format!("rank {rank} published an unreadable configuration"))?;
        let (_, differ) = config_changes(&theirs, config, &["out", "threads", "workers"])?;
        anyhow::ensure!(
            differ.is_empty(),
            "rank {}: the configuration differs from rank {rank}'s: {} (rank {rank}'s → this rank's). Start every rank with the same flags",
            group.rank,
            differ.join(", ")
        );
    }
    Ok(())
}

/// How many processes trained the run in `dir` last (its meta.json).
fn processes_of(dir: &std::path::Path) -> Result<usize> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the run's record", path.display()))?;
    let meta: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    meta["processes"].as_u64().map(|n| n as usize).with_context(|| format!("{}: no \"processes\" count", path.display()))
}

/// Refuses a resume whose flags change the run itself (the learning rate, the views, …), naming each key.
/// The number of processes may change when the global batch (processes × batch size) stays the same: the
/// steps are then the same steps (tests/distributed.rs); another global batch would be another run.
fn check_resumable(saved: &Config, resolved: &Config, saved_world: usize, world: usize, dir: &std::path::Path) -> Result<()> {
    let (global, new_global) = (saved.batch_size * saved_world, resolved.batch_size * world);
    if new_global != global {
        let fix = if global % world == 0 { format!("give --batch-size {} to continue it on {world}", global / world) } else {
            format!("{global} images do not split evenly over {world} processes")
        };
        anyhow::bail!(
            "--resume {}: the run trained on a global batch of {global} ({saved_world} process(es) × {}); this start would \
             take {new_global} ({world} × {}), which makes it another run: {fix}",
            dir.display(), saved.batch_size, resolved.batch_size
        );
    }
    let same_batch = Config { batch_size: saved.batch_size, ..resolved.clone() };
    let (allowed, refused) = config_changes(saved, &same_batch, RESUMABLE_CHANGES)?;
    anyhow::ensure!(
        refused.is_empty(),
        "--resume {}: these settings differ from the run's config.toml: {}. A resumed run continues the same run; \
         start a new run to change them (changes allowed on resume: {}, and the number of processes with the batch \
         size that keeps the global batch)",
        dir.display(), refused.join(", "), RESUMABLE_CHANGES.join(", ")
    );
    if !allowed.is_empty() {
        eprintln!("resuming with {}", allowed.join(", "));
    }
    if world != saved_world {
        eprintln!("resuming on {world} process(es) of {} images (was {saved_world} of {}): the same global batch of {global}", resolved.batch_size, saved.batch_size);
    }
    Ok(())
}

/// The run's projector outputs on up to 2,000 training images, checked without labels: SIGReg against
/// N(0, I), the effective rank, and whether the training SIGReg came down (`diagnostics::Health`).
fn embedding_health(args: &ModelArgs, model: &Model, run_dir: &std::path::Path, dataset: &crate::data::Dataset) -> Result<crate::diagnostics::Health> {
    use crate::eval::{FeatureKind, features};
    let sample = crate::data::stratified_subset(&dataset.train, 2000);
    let sample = super::model_args::fit_channels(&sample, model);
    let embeddings = features(&model.encoder.backbone, &sample, &model.crop, FeatureKind::Embedding, model.device)?;
    let projector = args.trained_projector(model.encoder.backbone.embed_dim(), model.device)?;
    let z = tch::no_grad(|| projector.forward(&embeddings.to_device(model.device), false)).to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let sigreg = crate::sigreg::SigReg::default().forward(&z, 0).double_value(&[]);
    let training: Vec<f64> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()?["sigreg"].as_f64())
        .collect();
    let (n, dim) = (z.size()[0], z.size()[1]);
    Ok(crate::diagnostics::Health::new(n, dim, sigreg, crate::diagnostics::spectrum(&z).effective_rank, &training))
}
