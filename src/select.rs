//! Label-free model selection (paper §6.2, eq. 8): rank runs by training loss / λ^α. With α ≈ 0.4
//! the ranking matches downstream accuracy (Spearman ≈ 0.99 in the paper), so λ, learning rate
//! and schedule can be chosen without labels.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

/// What selection needs of one run directory.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub run_dir: PathBuf,
    pub lambda: f64,
    /// Mean training loss over the last steps (the last tenth, at most 50 steps): less noisy than one step.
    pub final_loss: f64,
    /// Probe accuracy if any was measured: the offline linear probe (probe-*-linear.json) if present,
    /// else the online probe of the run.
    pub probe_accuracy: Option<f64>,
    /// What the loss values depend on besides how well the run trained: the global batch (SIGReg's
    /// statistic scales with N) and the views. Runs whose settings differ are not comparable by loss.
    pub loss_scale: String,
}

impl RunResult {
    /// loss / λ^α (α = 0: the plain loss). Lower is better.
    pub fn score(&self, alpha: f64) -> f64 {
        self.final_loss / self.lambda.powf(alpha)
    }
}

/// What selection needs of a finished run: its config, its losses (every line of metrics.jsonl readable), its
/// summary (written when a run ends) and its weights. Anything else is an error naming the file.
pub fn read_run(run_dir: &Path) -> Result<RunResult> {
    let config_path = run_dir.join("config.toml");
    let config: crate::train::config::Config = toml::from_str(
        &std::fs::read_to_string(&config_path).with_context(|| format!("{}: cannot read (not a run directory?)", config_path.display()))?,
    )
    .with_context(|| format!("{}: invalid config", config_path.display()))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path).with_context(|| format!("{}: cannot read", metrics_path.display()))?;
    let mut losses = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let record: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: line {} is not a JSON record", metrics_path.display(), number + 1))?;
        losses.extend(record["loss"].as_f64());
    }
    ensure!(!losses.is_empty(), "{}: no training steps recorded", metrics_path.display());
    let summary_path = run_dir.join("summary.json");
    ensure!(summary_path.exists(), "{}: no summary.json, the run has not finished (resume it to the end, or leave it out)", run_dir.display());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path)?)
        .with_context(|| format!("{}: not a readable summary", summary_path.display()))?;
    ensure!(run_dir.join("backbone.safetensors").exists(), "{}: no backbone.safetensors to choose", run_dir.display());
    let final_loss = late_loss(&losses);

    let offline = std::fs::read_dir(run_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("probe-") && n.ends_with("-linear.json")))
        .find_map(|p| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).ok()?).ok()?["accuracy"].as_f64());
    let online = summary["probe_accuracy"].as_f64();
    let size = |s: Option<usize>| s.map_or("the default size".to_string(), |s| format!("{s} px"));
    let scales = |s: Option<[f64; 2]>| s.map_or("the recipe's crops".to_string(), |[low, high]| format!("crops {low}–{high}"));
    let loss_scale = format!(
        "batch {} × {} views ({} global at {}, {}; {} local at {}, {})",
        config.batch_size * config.grad_accum,
        config.global_views + config.local_views,
        config.global_views,
        size(config.global_size),
        scales(config.global_scale),
        config.local_views,
        size(config.local_size),
        scales(config.local_scale)
    );
    Ok(RunResult { run_dir: run_dir.to_path_buf(), lambda: config.lambda, final_loss, probe_accuracy: offline.or(online), loss_scale })
}

/// The training loss at the end of `losses` (a run's, in step order): the mean of the last tenth, at least
/// one step and at most 50, less noisy than the last step alone.
fn late_loss(losses: &[f64]) -> f64 {
    let tail = (losses.len() / 10).clamp(1, 50);
    losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64
}

/// One kept checkpoint of a run (`backbone-step<N>.safetensors`, from `--keep-backbones`) and the
/// training loss at its step: the mean over the same window as a run's final loss, ending at that step.
#[derive(Clone, Debug, Serialize)]
pub struct Checkpoint {
    pub step: u64,
    pub weights: PathBuf,
    pub loss: f64,
}

/// The kept checkpoints of a run, by step, each with its training loss.
pub fn read_checkpoints(run_dir: &Path) -> Result<Vec<Checkpoint>> {
    let metrics_path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path).with_context(|| format!("{}: cannot read (not a run directory?)", metrics_path.display()))?;
    let losses: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|r| Some((r["step"].as_u64()?, r["loss"].as_f64()?)))
        .collect();
    let mut checkpoints = Vec::new();
    for entry in std::fs::read_dir(run_dir).with_context(|| format!("{}: cannot list", run_dir.display()))? {
        let path = entry?.path();
        let Some(step) = path.file_name().and_then(|n| n.to_str()?.strip_prefix("backbone-step")?.strip_suffix(".safetensors")?.parse::<u64>().ok()) else {
            continue;
        };
        let upto: Vec<f64> = losses.iter().filter(|(s, _)| *s <= step).map(|(_, l)| *l).collect();
        ensure!(!upto.is_empty(), "{}: no losses recorded up to step {step}", metrics_path.display());
        checkpoints.push(Checkpoint { step, weights: path, loss: late_loss(&upto) });
    }
    ensure!(
        checkpoints.len() >= 2,
        "{}: {} kept checkpoint(s) (backbone-step<N>.safetensors); train with --keep-backbones to keep one per --checkpoint-every",
        run_dir.display(),
        checkpoints.len()
    );
    checkpoints.sort_by_key(|c| c.step);
    Ok(checkpoints)
}

/// Ranks 1..n with ties given their average rank.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's ρ: Pearson's correlation of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (average_ranks(x), average_ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// Spearman's ρ with a 95% bootstrap interval: the 2.5th and 97.5th percentiles of ρ over `resamples`
/// resamplings of the pairs with replacement (fixed seed; resamples whose ranks are all tied are left out).
pub fn spearman_interval(x: &[f64], y: &[f64], resamples: usize) -> (f64, f64, f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let n = x.len();
    let mut values: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let picks: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            let (xs, ys): (Vec<f64>, Vec<f64>) = picks.iter().map(|&i| (x[i], y[i])).unzip();
            Some(spearman(&xs, &ys)).filter(|r| r.is_finite())
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (spearman(x, y), at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_scipy() {
        // Values from scipy.stats.spearmanr (scipy 1.17.1): no ties, ties in both, a perfect inverse.
        let cases: [(&[f64], &[f64], f64); 3] = [
            (&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0], 0.820_782_681_668_123_8),
            (&[1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0], &[2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 4.0], 0.833_333_333_333_333_5),
            (&[0.3, 0.1, 0.2], &[1.0, 3.0, 2.0], -1.0),
        ];
        for (x, y, expected) in cases {
            assert!((spearman(x, y) - expected).abs() < 1e-12, "{x:?} {y:?}: {} vs {expected}", spearman(x, y));
        }
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
    }

    #[test]
    fn bootstrap_intervals_hold_the_estimate_and_shrink_with_more_runs() {
        // A perfect order: every resample is perfectly ordered too (or all tied, left out).
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(spearman_interval(&x, &x, 500), (1.0, 1.0, 1.0));
        // A noisy relation: the interval holds ρ, and is narrower with 4 times the runs.
        let noisy = |n: usize| -> (Vec<f64>, Vec<f64>) {
            let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let y = x.iter().map(|&v| v + 3.0 * ((v * 12.9898).sin() * 43758.5453).fract() * n as f64 / 10.0).collect();
            (x, y)
        };
        let (x, y) = noisy(12);
        let (rho, low, high) = spearman_interval(&x, &y, 2000);
        assert!(low <= rho && rho <= high && high - low > 0.05, "{low} {rho} {high}");
        let (x, y) = noisy(48);
        let (rho48, low48, high48) = spearman_interval(&x, &y, 2000);
        assert!(low48 <= rho48 && rho48 <= high48 && high48 - low48 < high - low, "{low48} {rho48} {high48} vs {low} {high}");
    }
}
