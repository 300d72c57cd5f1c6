//! `lejepa select RUN...`: choose a run without labels, by final training loss / λ^α.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::select::{RunResult, read_checkpoints, read_run, spearman_interval};

#[derive(clap::Args)]
pub struct Args {
    /// Run directories, or folders of runs (e.g. a sweep).
    #[arg(required_unless_present = "checkpoints")]
    runs: Vec<PathBuf>,
    /// Instead: rank one run's kept checkpoints (backbone-step<N>.safetensors, from --keep-backbones) by their
    /// training loss at that step, and report ρ against a linear probe of each (the paper's Figure 1, along training).
    #[arg(long, value_name = "RUN", conflicts_with = "runs")]
    checkpoints: Option<PathBuf>,
    /// With --checkpoints: training and test images of each probe (stratified subsets of the run's data).
    #[arg(long, default_value_t = 5000)]
    probe_images: usize,
    /// Exponent of λ in the ranking score loss / λ^α (0: the plain loss). 0.4 is the paper's; across λ this project's
    /// 24-run study found no α that ranks reliably (results/selection-study), within one λ the loss itself ranks.
    #[arg(long, default_value_t = 0.4)]
    alpha: f64,
    /// Scatter plot of the score against probe accuracy (PNG), when probe results exist.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// Run directories among the given paths: each path itself, or its subfolders holding a run.
fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for path in paths {
        if path.join("config.toml").exists() {
            dirs.push(path.clone());
        } else if let Ok(entries) = std::fs::read_dir(path) {
            let mut subs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("config.toml").exists()).collect();
            subs.sort();
            dirs.extend(subs);
        } else {
            dirs.push(path.clone()); // reported as not a run by read_run
        }
    }
    dirs
}

/// Rank agreement ρ(−score, accuracy) over the runs with a probe accuracy (1 = same order), with its 95%
/// bootstrap interval over runs: (ρ, low, high).
fn agreement(runs: &[RunResult], alpha: f64) -> Option<(f64, f64, f64)> {
    let with_acc: Vec<&RunResult> = runs.iter().filter(|r| r.probe_accuracy.is_some()).collect();
    (with_acc.len() >= 3).then(|| {
        let scores: Vec<f64> = with_acc.iter().map(|r| -r.score(alpha)).collect();
        let acc: Vec<f64> = with_acc.iter().map(|r| r.probe_accuracy.unwrap()).collect();
        spearman_interval(&scores, &acc, 2000)
    })
}

/// The α values whose agreement `select` reports (the paper's Figure 19 sweeps α the same way).
const ALPHAS: [f64; 5] = [0.0, 0.2, 0.4, 0.6, 0.8];

pub fn report(paths: &[PathBuf], alpha: f64, plot: Option<&Path>, as_json: bool) -> Result<()> {
    // A broken or unfinished run is left out with its reason; the others are still ranked.
    let (mut runs, mut skipped) = (Vec::new(), Vec::new());
    for dir in expand(paths) {
        match read_run(&dir) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("skipping {}: {e:#}", dir.display());
                skipped.push(json!({"run_dir": dir, "reason": format!("{e:#}")}));
            }
        }
    }
    ensure!(!runs.is_empty(), "no finished runs found among {} folder(s) (each skipped one is listed above)", skipped.len());
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| runs[a].score(alpha).total_cmp(&runs[b].score(alpha)));
    println!("{:<48} {:>7} {:>10} {:>14} {:>10}", "run", "λ", "loss", format!("loss/λ^{alpha}"), "probe %");
    for &i in &order {
        let r = &runs[i];
        let acc = r.probe_accuracy.map_or("-".to_string(), |a| format!("{:.2}", 100.0 * a));
        println!("{:<48} {:>7} {:>10.4} {:>14.4} {:>10}", r.run_dir.display(), r.lambda, r.final_loss, r.score(alpha), acc);
    }
    let chosen = &runs[order[0]];
    println!("chosen (lowest loss/λ^{alpha}): {}", chosen.run_dir.display());
    // The loss compares runs only at the same global batch and views: say so rather than rank silently.
    let mut scales: Vec<&str> = runs.iter().map(|r| r.loss_scale.as_str()).collect();
    scales.sort_unstable();
    scales.dedup();
    let incomparable = scales.len() > 1;
    if incomparable {
        eprintln!(
            "warning: these runs differ in what their loss depends on besides training ({}); their losses do not rank them \
             fairly: compare runs of one batch and view recipe",
            scales.join(" | ")
        );
    }
    if runs.iter().any(|r| r.lambda != runs[0].lambda) {
        eprintln!(
            "note: these runs differ in λ. In this project's selection study (results/selection-study: 24 runs) the loss \
             ranked the runs of one λ (ρ 0.60–0.94) but not runs of different λ (ρ 0.13 at α 0.4, 0.53 at α 0.6): \
             trust the ranking within one λ more than across λ"
        );
    }
    let best = runs.iter().filter_map(|r| r.probe_accuracy).fold(f64::NAN, f64::max);
    let lost = chosen.probe_accuracy.map(|a| best - a).filter(|l| l.is_finite());
    if let Some(lost) = lost {
        println!("accuracy lost by choosing without labels: {:.2} points (best probe {:.2}%)", 100.0 * lost, 100.0 * best);
    }
    let curve: Vec<(f64, (f64, f64, f64))> = ALPHAS.iter().chain([alpha].iter().filter(|a| !ALPHAS.contains(a))).filter_map(|&a| Some((a, agreement(&runs, a)?))).collect();
    if !curve.is_empty() {
        println!("Spearman ρ(−loss/λ^α, probe accuracy) over {} runs, with 95% bootstrap intervals over runs:", runs.iter().filter(|r| r.probe_accuracy.is_some()).count());
        for (a, (rho, low, high)) in &curve {
            println!("  α = {a:<4} ρ = {rho:>6.3}  [{low:.3}, {high:.3}]{}", if *a == alpha { "  (used to choose)" } else { "" });
        }
    }
    let (plain, scaled) = (agreement(&runs, 0.0).map(|r| r.0), agreement(&runs, alpha).map(|r| r.0));
    if let (Some(plain), Some(scaled)) = (plain, scaled) {
        if let Some(path) = plot {
            let series = |a: f64| -> Vec<(f64, f64)> {
                runs.iter().filter_map(|r| Some((r.score(a).ln(), 100.0 * r.probe_accuracy?))).collect()
            };
            crate::train::plots::scatter(path, &format!("training loss vs probe accuracy (ρ = {plain:.2} plain, {scaled:.2} with α = {alpha})"), "ln(score)", &[("loss", series(0.0)), (&format!("loss/λ^{alpha}"), series(alpha))])?;
            println!("plot: {}", path.display());
        }
    }
    if as_json {
        let curve: Vec<serde_json::Value> = curve.iter().map(|(a, (rho, low, high))| json!({"alpha": a, "spearman": rho, "low": low, "high": high})).collect();
        println!(
            "{}",
            json!({"chosen": chosen.run_dir, "alpha": alpha, "spearman_plain": plain, "spearman_alpha": scaled, "alpha_curve": curve,
                   "accuracy_lost": lost, "comparable": !incomparable, "runs": runs, "skipped": skipped})
        );
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    match &args.checkpoints {
        Some(run) => along_training(run, args.probe_images, args.json),
        None => report(&args.runs, args.alpha, args.plot.as_deref(), args.json),
    }
}

/// Within one run λ is fixed, so the plain loss ranks its checkpoints; each is probed as `pretrain`'s final probe is.
fn along_training(run: &Path, probe_images: usize, as_json: bool) -> Result<()> {
    let checkpoints = read_checkpoints(run)?;
    let of_run = super::model_args::ModelArgs::of_run(run, "cpu");
    let config = of_run.run_config()?.context("a run directory has a config.toml")?;
    let dataset = crate::data::open(&config.data, &Default::default())?;
    let (train, test) = (crate::data::stratified_subset(&dataset.train, probe_images), crate::data::stratified_subset(&dataset.test, probe_images));
    ensure!(train.labels.is_some() && test.labels.is_some() && !test.is_empty(), "{}: probing the checkpoints needs labeled data with a test split", config.data);
    println!("{:>8} {:>10} {:>10}", "step", "loss", "probe %");
    let mut accuracies = Vec::new();
    for checkpoint in &checkpoints {
        let args = super::model_args::ModelArgs {
            checkpoint: Some(checkpoint.weights.clone()),
            arch: Some(config.arch.clone()),
            device: config.device.to_string(),
            ..of_run.clone()
        };
        let model = args.load(&dataset, false)?;
        let accuracy = super::probe::frozen_probe(&model, &train, &test, dataset.classes.len())?;
        println!("{:>8} {:>10.4} {:>10.2}", checkpoint.step, checkpoint.loss, 100.0 * accuracy);
        accuracies.push(accuracy);
    }
    let losses: Vec<f64> = checkpoints.iter().map(|c| -c.loss).collect();
    let (rho, low, high) = spearman_interval(&losses, &accuracies, 2000);
    println!("Spearman ρ(−loss, probe accuracy) over {} checkpoints: {rho:.3} [{low:.3}, {high:.3}] (95% bootstrap interval)", checkpoints.len());
    if as_json {
        let rows: Vec<serde_json::Value> =
            checkpoints.iter().zip(&accuracies).map(|(c, a)| json!({"step": c.step, "weights": c.weights, "loss": c.loss, "probe_accuracy": a})).collect();
        println!("{}", json!({"run_dir": run, "checkpoints": rows, "spearman": rho, "low": low, "high": high}));
    }
    Ok(())
}
