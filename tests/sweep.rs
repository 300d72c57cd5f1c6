//! `lejepa sweep` and `lejepa select` end to end on digits: every grid point becomes a run, a
//! rerun skips finished runs, and select ranks by loss / λ^α with Spearman's ρ against the probe.

mod common;

use std::process::Command;

use common::{CHILD_DEADLINE, OutputWithin};

fn lejepa(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lejepa")).args(args).output_within(CHILD_DEADLINE)
}

#[test]
fn sweep_runs_the_grid_resumes_and_select_ranks() {
    let out = common::scratch("runs");
    let sweep = |grid: &str| {
        lejepa(&[
            "sweep", "--preset", "cpu-small", "--data", "digits", "--arch", "vit-tiny-patch4-depth2", "--projector", "64,64,16", "--batch-size", "64",
            "--slices", "32", "--local-views", "0", "--max-steps", "8", "--workers", "1", "--threads", "1", "--eval-images", "100",
            "--grid", grid, "--out", out.to_str().unwrap(),
        ])
    };
    let result = sweep("lambda=0.02,0.2 lr=1e-3,3e-3");
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let names = ["lambda=0.02_lr=1e-3", "lambda=0.02_lr=3e-3", "lambda=0.2_lr=1e-3", "lambda=0.2_lr=3e-3"];
    for name in names {
        assert!(out.join(name).join("summary.json").exists(), "{name} did not finish");
    }
    let config = std::fs::read_to_string(out.join(names[3]).join("config.toml")).unwrap();
    assert!(config.contains("lambda = 0.2") && config.contains("lr = 0.003"), "{config}");

    // A second invocation with one more grid value runs only the new point.
    let modified = std::fs::metadata(out.join(names[0]).join("summary.json")).unwrap().modified().unwrap();
    let result = sweep("lambda=0.02,0.2,0.5 lr=1e-3,3e-3");
    assert!(result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(stderr.matches("done already").count(), 4, "{stderr}");
    assert_eq!(std::fs::metadata(out.join(names[0]).join("summary.json")).unwrap().modified().unwrap(), modified);

    let select = lejepa(&["select", out.to_str().unwrap(), "--json", "--plot", out.join("rank.png").to_str().unwrap()]);
    assert!(select.status.success(), "{}", String::from_utf8_lossy(&select.stderr));
    // Runs of several λ: select says what the selection study found about ranking across λ.
    assert!(String::from_utf8_lossy(&select.stderr).contains("these runs differ in λ"), "{}", String::from_utf8_lossy(&select.stderr));
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&select.stdout).lines().last().unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    // The chosen run is the one with the smallest loss / λ^0.4, computed here from the reported values.
    let score = |r: &serde_json::Value| r["final_loss"].as_f64().unwrap() / r["lambda"].as_f64().unwrap().powf(0.4);
    let best = runs.iter().min_by(|a, b| score(a).total_cmp(&score(b))).unwrap();
    assert_eq!(report["chosen"], best["run_dir"]);
    let rho = report["spearman_alpha"].as_f64().unwrap();
    assert!(out.join("rank.png").exists());
    // ρ(−score, probe accuracy) as scipy computes it from the same reported numbers.
    if let Some(python) = common::python_with("scipy", "select's ρ against scipy") {
        let pairs: Vec<String> = runs.iter().map(|r| format!("({}, {})", -score(r), r["probe_accuracy"].as_f64().unwrap())).collect();
        let script = format!("import scipy.stats\nx, y = zip(*[{}])\nprint(scipy.stats.spearmanr(x, y).statistic)", pairs.join(", "));
        let output = std::process::Command::new(python).args(["-c", &script]).output_within(CHILD_DEADLINE);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let theirs: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
        assert!((rho - theirs).abs() < 1e-12, "select's ρ {rho}, scipy's {theirs}");
    }

    // Broken and unfinished runs beside them are left out, each with its reason; the others are still ranked.
    let copy = |from: &str, to: &str| {
        std::fs::create_dir_all(out.join(to)).unwrap();
        for entry in std::fs::read_dir(out.join(from)).unwrap().flatten() {
            std::fs::copy(entry.path(), out.join(to).join(entry.file_name())).unwrap();
        }
    };
    copy(names[0], "z-garbled");
    std::fs::write(out.join("z-garbled/metrics.jsonl"), "{\"step\": 1, \"loss\": 0.5}\nnot json\n").unwrap();
    copy(names[1], "z-unfinished");
    std::fs::remove_file(out.join("z-unfinished/summary.json")).unwrap();
    let select = lejepa(&["select", out.to_str().unwrap(), "--json"]);
    let stderr = String::from_utf8_lossy(&select.stderr);
    assert!(select.status.success(), "{stderr}");
    assert!(stderr.contains("z-garbled/metrics.jsonl: line 2 is not a JSON record"), "{stderr}");
    assert!(stderr.contains("z-unfinished: no summary.json"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&select.stdout).lines().last().unwrap()).unwrap();
    assert_eq!((report["runs"].as_array().unwrap().len(), report["skipped"].as_array().unwrap().len()), (6, 2));

    let missing = lejepa(&["select", "/no/such/run"]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("/no/such/run"));
}

/// Writes a finished run as `select` reads it: config, per-step losses ending at `loss`, summary,
/// weights, and an offline probe result.
fn fake_run(dir: &std::path::Path, lambda: f64, batch: usize, loss: f64, accuracy: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = lejepa::train::config::Config { lambda, batch_size: batch, ..lejepa::train::config::Config::preset("cpu-small").unwrap() };
    std::fs::write(dir.join("config.toml"), toml::to_string(&config).unwrap()).unwrap();
    let metrics: String = (0..20).map(|step| format!("{{\"step\": {step}, \"loss\": {}}}\n", loss + 1.0 / (1.0 + step as f64) * (step < 10) as u8 as f64)).collect();
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(dir.join("summary.json"), "{}").unwrap();
    std::fs::write(dir.join("backbone.safetensors"), "").unwrap();
    std::fs::write(dir.join("probe-digits-linear.json"), format!("{{\"accuracy\": {accuracy}}}")).unwrap();
}

/// `select` reports ρ for each α with a bootstrap interval, the accuracy lost by choosing without labels,
/// and warns when the runs' losses are not comparable (another batch size).
#[test]
fn select_reports_the_alpha_curve_with_intervals_and_warns_on_incomparable_runs() {
    let out = common::scratch("select-curve");
    // Larger λ gives larger losses and better probes here: loss/λ^0.4 ranks the runs nearly as their accuracy
    // does, the plain loss nearly backwards.
    let runs = [(0.02, 0.30, 0.80), (0.05, 0.42, 0.84), (0.1, 0.50, 0.86), (0.02, 0.28, 0.82), (0.05, 0.40, 0.85), (0.1, 0.47, 0.88)];
    for (i, &(lambda, loss, acc)) in runs.iter().enumerate() {
        fake_run(&out.join(format!("run{i}")), lambda, 64, loss, acc);
    }
    let select = lejepa(&["select", out.to_str().unwrap(), "--json"]);
    let stderr = String::from_utf8_lossy(&select.stderr);
    assert!(select.status.success() && !stderr.contains("warning"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&select.stdout).lines().last().unwrap()).unwrap();
    let curve = report["alpha_curve"].as_array().unwrap();
    assert_eq!(curve.iter().map(|c| c["alpha"].as_f64().unwrap()).collect::<Vec<_>>(), vec![0.0, 0.2, 0.4, 0.6, 0.8]);
    for c in curve {
        let (rho, low, high) = (c["spearman"].as_f64().unwrap(), c["low"].as_f64().unwrap(), c["high"].as_f64().unwrap());
        assert!(low <= rho && rho <= high, "{c}");
    }
    // By hand: the scores loss/λ^0.4 of the six runs rank them exactly as their accuracies do.
    let at = |alpha: f64| curve.iter().find(|c| c["alpha"].as_f64() == Some(alpha)).unwrap()["spearman"].as_f64().unwrap();
    let scores: Vec<f64> = runs.iter().map(|&(lambda, loss, _)| loss / f64::powf(lambda, 0.4)).collect();
    let accuracies: Vec<f64> = runs.iter().map(|r| r.2).collect();
    assert!((at(0.4) - lejepa::select::spearman(&scores.iter().map(|s| -s).collect::<Vec<_>>(), &accuracies)).abs() < 1e-12);
    assert!(at(0.0) < 0.0, "the plain loss ranks these runs backwards: {}", at(0.0));
    let chosen_accuracy = runs[(0..6).min_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap()].2;
    let lost = report["accuracy_lost"].as_f64().unwrap();
    assert!((lost - (0.88 - chosen_accuracy)).abs() < 1e-12, "accuracy lost {lost}");
    assert_eq!(report["comparable"], true);

    // A run at another batch size: its loss scales differently; select says so.
    fake_run(&out.join("run-batch32"), 0.05, 32, 0.2, 0.5);
    let select = lejepa(&["select", out.to_str().unwrap(), "--json"]);
    let stderr = String::from_utf8_lossy(&select.stderr);
    assert!(stderr.contains("warning: these runs differ") && stderr.contains("batch 32") && stderr.contains("batch 64"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&select.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(report["comparable"], false);
}

/// `select --checkpoints RUN`: a run's kept checkpoints, each with its training loss at that step (the same
/// window as a run's final loss) and a probe; ρ between the two.
#[test]
fn select_ranks_the_checkpoints_of_one_run() {
    let out = common::scratch("select-checkpoints");
    let train = lejepa(&[
        "pretrain", "--preset", "cpu-small", "--data", "digits", "--arch", "vit-tiny-patch4-depth2", "--projector", "64,64,16",
        "--batch-size", "64", "--slices", "32", "--local-views", "0", "--max-steps", "8", "--checkpoint-every", "2",
        "--keep-backbones", "--workers", "1", "--no-online-probe", "--json", "--out", out.to_str().unwrap(),
    ]);
    assert!(train.status.success(), "{}", String::from_utf8_lossy(&train.stderr));
    let summary: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&train.stdout).lines().last().unwrap()).unwrap();
    let run = std::path::PathBuf::from(summary["run_dir"].as_str().unwrap());
    let select = lejepa(&["select", "--checkpoints", run.to_str().unwrap(), "--probe-images", "200", "--json"]);
    assert!(select.status.success(), "{}", String::from_utf8_lossy(&select.stderr));
    let report: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&select.stdout).lines().last().unwrap()).unwrap();
    let rows = report["checkpoints"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4, 6, 8]);
    // The loss at a step is the mean of the last tenth (at least one) of the losses up to it: here the step's own.
    let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    for row in rows {
        let step = row["step"].as_u64().unwrap() as usize;
        assert_eq!(row["loss"].as_f64().unwrap(), losses[step - 1], "step {step}");
        assert!((0.0..=1.0).contains(&row["probe_accuracy"].as_f64().unwrap()));
    }
    let (minus_loss, accuracy): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (-r["loss"].as_f64().unwrap(), r["probe_accuracy"].as_f64().unwrap())).unzip();
    assert_eq!(report["spearman"].as_f64().unwrap(), lejepa::select::spearman(&minus_loss, &accuracy));

    // A run without kept checkpoints says how to keep them.
    for entry in std::fs::read_dir(&run).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("backbone-step") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let refused = lejepa(&["select", "--checkpoints", run.to_str().unwrap()]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--keep-backbones"));
}
