//! `lejepa pretrain` end to end on a tiny real dataset (scikit-learn digits): the loss goes down,
//! checkpoints load, a killed run resumes onto the same loss curve, Ctrl-C saves, NaN is caught.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{CHILD_DEADLINE, OutputWithin, scratch};

/// A small but real configuration: ViT with 2 blocks on 8×8 digits, 2 global + 2 local views.
fn tiny(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lejepa"));
    cmd.args(["pretrain", "--preset", "cpu-small", "--data", "digits", "--arch", "vit-tiny-patch4-depth2", "--projector", "128,128,16"])
        .args(["--batch-size", "64", "--slices", "64", "--local-views", "2", "--epochs", "3", "--workers", "1"])
        .args(["--threads", "1", "--eval-images", "200", "--lr", "1e-3", "--json", "--out"])
        .arg(out)
        .args(extra);
    cmd
}

fn summary(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "pretrain failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().expect("no output")).unwrap()
}

fn losses(run_dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((r["step"].as_u64()?, r["loss"].as_f64()?))
        })
        .collect()
}

#[test]
fn loss_goes_down_and_the_run_reports_everything() {
    let out = scratch("down");
    let s = summary(&tiny(&out, &["--checkpoint-every", "20", "--keep-backbones"]).output_within(CHILD_DEADLINE));
    let train_images = lejepa::data::open("digits", &Default::default()).unwrap().train.len() as u64;
    assert_eq!(s["steps"], 3 * (train_images / 64), "3 epochs of whole batches of 64");
    let run_dir = PathBuf::from(s["run_dir"].as_str().unwrap());
    let curve = losses(&run_dir);
    let mean = |xs: &[(u64, f64)]| xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64;
    let (early, late) = (mean(&curve[..5]), mean(&curve[curve.len() - 5..]));
    assert!(late < 0.8 * early, "loss should fall: first steps {early:.4}, last steps {late:.4}");
    let accuracy = s["probe_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.3, "an online probe on digits should beat chance (10%) clearly: {accuracy}");
    for file in ["config.toml", "meta.json", "metrics.jsonl", "summary.json", "checkpoint.safetensors", "backbone.safetensors", "curves.png", "probe.png"] {
        assert!(run_dir.join(file).exists(), "{file} missing from the run directory");
    }
    // The exported backbone is a timm-named ViT that loads into a fresh model.
    let mut encoder = lejepa::models::Encoder::new(
        tch::Device::Cpu, lejepa::models::Arch::from_name("vit-tiny-patch4-depth2").unwrap(), 1, 8, 0.0, &[128, 128, 16],
    ).unwrap();
    encoder.load_backbone(&run_dir.join("backbone.safetensors")).unwrap();
    // --keep-backbones: every checkpoint's backbone stays (steps 20, 40, 60 and the last).
    let last = s["steps"].as_u64().unwrap();
    for step in [20, 40, 60, last] {
        encoder.load_backbone(&run_dir.join(format!("backbone-step{step}.safetensors"))).unwrap();
    }
    let kept = std::fs::read_dir(&run_dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("backbone-step")).count();
    assert_eq!(kept, 4);
    // meta.json names the commit the binary was built from: in a checkout, HEAD as cargo built it
    // for this test (a binary left from before a commit would name the previous one).
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("meta.json")).unwrap()).unwrap();
    let head = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output_within(CHILD_DEADLINE);
    if head.status.success() {
        assert_eq!(meta["git_commit"].as_str().unwrap(), String::from_utf8_lossy(&head.stdout).trim());
    }
}

#[test]
fn a_killed_run_resumes_onto_the_uninterrupted_loss_curve() {
    let out = scratch("resume");
    let reference = summary(&tiny(&out.join("a"), &["--max-steps", "12", "--drop-path", "0.1"]).output_within(CHILD_DEADLINE));
    let reference = losses(Path::new(reference["run_dir"].as_str().unwrap()));

    // Same run, killed (SIGKILL) once its first checkpoint (every 4 steps) is on disk.
    let mut child = tiny(&out.join("b"), &["--max-steps", "12", "--drop-path", "0.1", "--checkpoint-every", "4"]).spawn().unwrap();
    let run_dir = out.join("b/001-vit-tiny-patch4-depth2");
    let started = Instant::now();
    while !run_dir.join("checkpoint.safetensors").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = summary(&tiny(&out.join("unused"), &["--resume", run_dir.to_str().unwrap()]).output_within(CHILD_DEADLINE));
    assert_eq!(resumed["steps"], 12);
    let curve = losses(&run_dir);
    assert_eq!(resumed["first_loss"].as_f64(), Some(curve[0].1), "first_loss is the run's first, not the resume's");
    assert_eq!(curve.len(), reference.len(), "every step logged once");
    for ((s, a), (_, b)) in curve.iter().zip(&reference) {
        assert!((a - b).abs() <= 1e-5 * b.abs(), "step {s}: resumed loss {a}, uninterrupted {b}");
    }
}

/// Gradient accumulation resumes exactly too: a run of 2 micro-batches a step (f64, drop path on), stopped after
/// its step-2 checkpoint and resumed, logs the uninterrupted run's losses; and its first loss is the mean of its
/// two micro-batches', not the loss of a 64-image batch.
#[test]
fn a_run_with_gradient_accumulation_resumes_onto_the_uninterrupted_curve() {
    let out = scratch("accum");
    let accum = ["--grad-accum", "2", "--batch-size", "32", "--precision", "f64", "--drop-path", "0.1"];
    let run = |dir: &str, extra: &[&str]| summary(&tiny(&out.join(dir), &[&accum[..], extra].concat()).output_within(CHILD_DEADLINE));
    let reference = run("a", &["--max-steps", "4"]);
    let reference = losses(Path::new(reference["run_dir"].as_str().unwrap()));
    let first = run("b", &["--max-steps", "2", "--checkpoint-every", "2"]);
    let run_dir = PathBuf::from(first["run_dir"].as_str().unwrap());
    let resumed = run("unused", &["--resume", run_dir.to_str().unwrap(), "--max-steps", "4"]);
    assert_eq!(resumed["steps"], 4);
    let curve = losses(&run_dir);
    assert_eq!(curve.len(), 4, "every step logged once");
    for ((s, a), (_, b)) in curve.iter().zip(&reference) {
        assert!((a - b).abs() <= 1e-12 * b.abs(), "step {s}: resumed loss {a}, uninterrupted {b}");
    }
    let whole = summary(&tiny(&out.join("c"), &["--max-steps", "1", "--batch-size", "64", "--precision", "f64", "--drop-path", "0.1"]).output_within(CHILD_DEADLINE));
    let whole = losses(Path::new(whole["run_dir"].as_str().unwrap()))[0].1;
    assert!((whole - reference[0].1).abs() > 1e-6, "two micro-batches of 32 give another objective than one batch of 64 ({whole})");
}

/// The accumulated gradient is the mean of the micro-batches' gradients, each computed on its own. AdamW's
/// first moment after step t is 0.1·g_t + 0.9·m_(t−1), so a checkpoint holds the gradient exactly. Run A takes
/// one step of two micro-batches of 32; run B takes the same two batches as two steps of 32, with an lr so
/// small (1e-300) that the weights do not move, so its second gradient is taken at the same weights. λ = 0:
/// SIGReg's directions are drawn per step, so only the invariance term is the same objective in both runs.
#[test]
fn the_accumulated_gradient_is_the_mean_of_the_micro_batch_gradients() {
    let out = scratch("accum-gradient");
    let fixed = ["--batch-size", "32", "--precision", "f64", "--lambda", "0", "--lr", "1e-300", "--no-online-probe", "--local-views", "2"];
    let moments = |dir: &str, extra: &[&str]| -> std::collections::HashMap<String, tch::Tensor> {
        let s = summary(&tiny(&out.join(dir), &[&fixed[..], extra].concat()).output_within(CHILD_DEADLINE));
        let checkpoint = Path::new(s["run_dir"].as_str().unwrap()).join("checkpoint.safetensors");
        tch::Tensor::read_safetensors(checkpoint)
            .unwrap()
            .into_iter()
            .filter_map(|(name, t)| name.strip_prefix("adamw.exp_avg.").map(|n| (n.to_string(), t)))
            .collect()
    };
    let accumulated = moments("a", &["--grad-accum", "2", "--max-steps", "1"]);
    let first = moments("b1", &["--max-steps", "1"]);
    let second = moments("b2", &["--max-steps", "2"]);
    assert!(accumulated.len() > 10 && accumulated.len() == first.len(), "{} moments", accumulated.len());
    let (mut largest, mut worst) = (0.0f64, 0.0f64);
    for (name, m) in &accumulated {
        let g = m / 0.1;
        let g1 = &first[name] / 0.1;
        let g2 = (&second[name] - &first[name] * 0.9) / 0.1;
        let mean = (&g1 + &g2) / 2.0;
        largest = largest.max(mean.abs().max().double_value(&[]));
        worst = worst.max((&g - &mean).abs().max().double_value(&[]));
        assert!((&g1 - &g2).abs().max().double_value(&[]) > 0.0 || g1.abs().max().double_value(&[]) == 0.0, "{name}: two batches, one gradient?");
    }
    eprintln!("accumulated vs mean of micro-batches: max abs diff {worst:e}, largest gradient {largest:e}");
    assert!(largest > 1e-3, "the gradients are not all zero: largest {largest}");
    assert!(worst <= 1e-6 * largest.max(1.0), "accumulated gradient vs the mean of the micro-batches': {worst} (largest {largest})");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let out = scratch("sigint");
    let child = tiny(&out, &["--epochs", "50"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let run_dir = out.join("001-vit-tiny-patch4-depth2");
    let started = Instant::now();
    while std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(true, |m| m.lines().count() < 3) {
        assert!(started.elapsed() < Duration::from_secs(120), "training did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let s = summary(&common::wait_within(child, Duration::from_secs(120), "the run after Ctrl-C"));
    assert_eq!(s["interrupted"], true);
    let steps = s["steps"].as_u64().unwrap();
    assert!(steps >= 3 && steps < 1000, "stopped after {steps} steps");
    let checkpoint = tch::Tensor::read_safetensors(run_dir.join("checkpoint.safetensors")).unwrap();
    let saved_step = checkpoint.iter().find(|(n, _)| n == "step").unwrap().1.int64_value(&[]);
    assert_eq!(saved_step as u64, steps, "the checkpoint holds the step it stopped at");
}

/// `--resume` continues the same run or says why not: a changed setting is refused by name, a finished
/// run says so, a temporary file left by a killed write is removed, a broken checkpoint is named.
#[test]
fn resume_refuses_another_run_and_names_a_broken_checkpoint() {
    let out = scratch("resume-checks");
    let first = summary(&tiny(&out, &["--max-steps", "2"]).output_within(CHILD_DEADLINE));
    let run_dir = PathBuf::from(first["run_dir"].as_str().unwrap());
    let resume = |extra: &[&str]| tiny(&out, &[extra, &["--resume", run_dir.to_str().unwrap()]].concat()).output_within(CHILD_DEADLINE);

    let refused = resume(&["--max-steps", "3", "--lr", "5e-3", "--local-views", "1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("lr (0.001 → 0.005)") && stderr.contains("local_views (2 → 1)") && !stderr.contains("max_steps ("), "{stderr}");
    assert_eq!(losses(&run_dir).len(), 2, "nothing trained");

    let finished = resume(&["--max-steps", "2"]);
    assert!(String::from_utf8_lossy(&finished.stderr).contains("finished at step 2 of 2"), "{}", String::from_utf8_lossy(&finished.stderr));
    assert_eq!(summary(&finished)["steps"], 2);

    let leftover = run_dir.join("checkpoint.safetensors.tmp");
    std::fs::write(&leftover, b"half a checkpoint").unwrap();
    let continued = resume(&["--max-steps", "3"]);
    assert!(String::from_utf8_lossy(&continued.stderr).contains("removed"), "{}", String::from_utf8_lossy(&continued.stderr));
    assert_eq!(summary(&continued)["steps"], 3);
    assert!(!leftover.exists());

    let checkpoint = run_dir.join("checkpoint.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    let broken = resume(&["--max-steps", "4"]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success());
    assert!(stderr.contains("checkpoint.safetensors: not a readable checkpoint") && !stderr.contains("panicked"), "{stderr}");
}

/// A NaN in a real tensor, not in a host-side copy: in a backbone weight it makes the loss NaN; in the online
/// probe's weight the loss stays finite but the gradients do not. Either stops the step before AdamW, names
/// the step and the term or the variable, and leaves the checkpoint as it was.
#[test]
fn a_nan_stops_the_run_and_keeps_the_last_good_checkpoint() {
    for (poisoned, expected) in [("backbone.blocks.0.attn.qkv.weight", "the loss is not finite"), ("probe.linear.weight", "the gradient of probe.linear.")] {
        let out = scratch("nan");
        let run_dir = PathBuf::from(summary(&tiny(&out, &["--max-steps", "6"]).output_within(CHILD_DEADLINE))["run_dir"].as_str().unwrap());
        let checkpoint = run_dir.join("checkpoint.safetensors");
        let mut tensors = tch::Tensor::read_safetensors(&checkpoint).unwrap();
        let weight = &mut tensors.iter_mut().find(|(n, _)| n == poisoned).unwrap_or_else(|| panic!("no {poisoned}")).1;
        let _ = weight.get(0).get(0).fill_(f64::NAN);
        tch::Tensor::write_safetensors(&tensors, &checkpoint).unwrap();
        let before = std::fs::read(&checkpoint).unwrap();
        let output = tiny(&out, &["--max-steps", "9", "--resume", run_dir.to_str().unwrap()]).output_within(CHILD_DEADLINE);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("step 6") && stderr.contains(expected) && stderr.contains("not finite"), "{poisoned}: {stderr}");
        assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "{poisoned}: the checkpoint is left as it was");
        assert_eq!(losses(&run_dir).len(), 6, "{poisoned}: no step after the last good one is logged");
    }
}

/// `--embedding-dim`: a Linear between backbone and projector (the official recipes' 512-d embedding),
/// trained with them, which the online probe reads as MINIMAL.md's does; backbone files stay timm's.
#[test]
fn an_embedding_layer_sits_between_backbone_and_projector_and_feeds_the_online_probe() {
    let out = scratch("embedding-layer");
    let s = summary(&tiny(&out, &["--embedding-dim", "96"]).output_within(CHILD_DEADLINE));
    let run_dir = PathBuf::from(s["run_dir"].as_str().unwrap());
    let accuracy = s["probe_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.25, "the online probe on the 96-d embedding should beat chance (10%) clearly: {accuracy}");
    let shapes: std::collections::HashMap<String, Vec<i64>> = tch::Tensor::read_safetensors(run_dir.join("checkpoint.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.size()))
        .collect();
    // ViT-tiny: 192-d class token → 96 → the projector's 128, 128, 16.
    assert_eq!(shapes["projector.embedding.weight"], [96, 192]);
    assert_eq!(shapes["projector.0.weight"], [128, 96]);
    assert_eq!(shapes["probe.linear.weight"], [10, 96], "the online probe reads the embedding layer's output");
    assert!(shapes.contains_key("adamw.exp_avg.projector.embedding.weight"), "AdamW trains the embedding layer");
    let embedding = tch::Tensor::read_safetensors(run_dir.join("checkpoint.safetensors")).unwrap();
    let (_, weight) = embedding.iter().find(|(n, _)| n == "projector.embedding.weight").unwrap();
    let mut fresh = lejepa::models::Encoder::with_embedding(
        tch::Device::Cpu, lejepa::models::Arch::from_name("vit-tiny-patch4-depth2").unwrap(), 1, 8, 0.0, Some(96), &[128, 128, 16],
    )
    .unwrap();
    let initial = fresh.vs.variables()["projector.embedding.weight"].shallow_clone();
    assert!((weight - initial).abs().max().double_value(&[]) > 0.0, "the embedding layer was trained");
    // The backbone file has no embedding layer: it loads into the plain backbone, as timm's num_classes=0.
    fresh.load_backbone(&run_dir.join("backbone.safetensors")).unwrap();
    // The config records the layer, so a resume or `embed --projector` rebuilds it.
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("embedding_dim = 96"), "{config}");
    let embed = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["embed", "--run", run_dir.to_str().unwrap(), "--projector", "--out"])
        .arg(out.join("z.npy"))
        .output_within(CHILD_DEADLINE);
    assert!(embed.status.success(), "{}", String::from_utf8_lossy(&embed.stderr));
    assert_eq!(tch::Tensor::read_npy(out.join("z.npy")).unwrap().size()[1], 16, "embed --projector goes through the layer");
}

#[test]
fn bad_config_values_are_rejected_before_training() {
    let out = scratch("bad");
    // digits has 1,797 images in all: a batch of 2,000 does not fit, and the error says what would.
    let cases = [
        ("--lambda", "1.5", "lambda"), ("--arch", "vit-giant", "unknown architecture"), ("--preset", "huge", "unknown preset"),
        ("--batch-size", "1", "batch_size must be at least 2"), ("--batch-size", "2000", "too few for batch_size 2000"),
        ("--precision", "f16", "f16"), ("--device", "tpu", "tpu"),
    ];
    for (flag, value, expected) in cases {
        let output = tiny(&out, &[flag, value]).output_within(CHILD_DEADLINE);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{flag} {value}: {stderr}");
    }
    assert!(std::fs::read_dir(&*out).unwrap().next().is_none(), "a refused start leaves no run directory behind");
    let config = out.join("bad.toml");
    std::fs::write(&config, "lamda = 0.1\n").unwrap();
    let output = tiny(&out, &["--config", config.to_str().unwrap()]).output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("bad.toml") && stderr.contains("lamda"), "{stderr}");
}

#[test]
fn a_lambda_small_for_the_batch_is_warned_about() {
    let out = scratch("small-lambda");
    // Batch 64 (tiny's): λ 0.01 gives N·λ 0.64, the balance at which RESULTS.md saw the embedding narrow to one or
    // two directions; the default λ 0.05 gives 3.2.
    let stderr = |lambda: &str| {
        let output = tiny(&out.join(lambda), &["--lambda", lambda, "--max-steps", "1"]).output_within(CHILD_DEADLINE);
        summary(&output);
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let warned = stderr("0.01");
    assert!(warned.contains("N·λ = 0.64"), "{warned}");
    assert!(!stderr("0.05").contains("N·λ"));
}

#[test]
fn bf16_autocast_on_cpu_runs_in_bf16_and_tracks_f32() {
    let out = scratch("bf16");
    let run = |precision: &str| summary(&tiny(&out.join(precision), &["--max-steps", "12", "--precision", precision]).output_within(CHILD_DEADLINE));
    let (f32_run, bf16_run) = (run("f32"), run("bf16"));
    let first = |s: &serde_json::Value| s["first_loss"].as_f64().unwrap();
    let last = |s: &serde_json::Value| s["final_loss"].as_f64().unwrap();
    let gap = (first(&bf16_run) - first(&f32_run)).abs() / first(&f32_run);
    assert!(gap > 0.0, "identical losses: autocast did not switch to bf16");
    assert!(gap < 0.01, "first loss: bf16 {} vs f32 {}", first(&bf16_run), first(&f32_run));
    // A stale bf16 weight cache would freeze the forward pass at the first step's weights.
    assert!(last(&bf16_run) < 0.9 * first(&bf16_run), "bf16 loss must fall like f32's");
    assert!((last(&bf16_run) - last(&f32_run)).abs() / last(&f32_run) < 0.1);
}

#[test]
fn a_run_that_cannot_fit_in_memory_says_so_before_training() {
    let out = scratch("memory");
    let output = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["pretrain", "--preset", "cpu-small", "--arch", "vit-base-patch4", "--batch-size", "60000", "--workers", "1", "--out"])
        .arg(out.as_os_str())
        .output_within(CHILD_DEADLINE);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs about") && stderr.contains("available") && stderr.contains("--batch-size"), "{stderr}");
    let metrics = std::fs::read_to_string(out.join("001-vit-base-patch4/metrics.jsonl")).unwrap_or_default();
    assert!(metrics.is_empty(), "no training step may have run");
}

#[test]
fn mkl_kernel_choice_changes_the_speed_not_the_losses() {
    // Our binaries tell MKL the CPU is Intel's, so that it runs its AVX2 kernels on AMD CPUs too
    // (src/mkl_dispatch.rs); LEJEPA_MKL_VENDOR_CHECK=1 keeps MKL's own choice. On an AMD CPU the two
    // are different kernels (summing in another order); on an Intel one the same. Either way the
    // losses of the first steps agree to f32 rounding.
    let out = scratch("mkl");
    let forced = tiny(&out.join("forced"), &["--max-steps", "3"]).output_within(CHILD_DEADLINE);
    let own = tiny(&out.join("own"), &["--max-steps", "3"]).env("LEJEPA_MKL_VENDOR_CHECK", "1").output_within(CHILD_DEADLINE);
    let (forced, own) = (summary(&forced), summary(&own));
    let curve = |s: &serde_json::Value| losses(&PathBuf::from(s["run_dir"].as_str().unwrap()));
    let (forced, own) = (curve(&forced), curve(&own));
    assert_eq!((forced.len(), own.len()), (3, 3));
    for ((step, a), (_, b)) in forced.iter().zip(&own) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "step {step}: loss {a} with MKL's Intel kernels, {b} with its own choice");
    }
}
