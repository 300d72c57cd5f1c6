//! Data-parallel pretraining over c10d/Gloo on this machine: two processes on 127.0.0.1, each with
//! half of every batch, must take exactly the step one process takes on the whole batch — same
//! loss, same weights, optimizer moments and BatchNorm statistics — and a group must fail cleanly.
//! Runs are in f64 so that "the same" can be checked to 1e-5 relative without float32 rounding
//! (AdamW's first steps divide by |g|, which turns rounding noise in zero gradients into updates).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tch::Tensor;

use common::{CHILD_DEADLINE, OutputWithin, scratch};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A small run on digits: 2 global + 2 local views, the online probe on, drop path 0.
fn pretrain(arch: &str, batch_size: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lejepa"));
    cmd.args(["pretrain", "--preset", "cpu-small", "--data", "digits", "--arch", arch, "--projector", "64,64,16", "--slices", "32"])
        .args(["--local-views", "2", "--workers", "1", "--threads", "1", "--eval-images", "100", "--precision", "f64"])
        .args(["--batch-size", &batch_size.to_string(), "--json"])
        .args(extra);
    cmd
}

fn run_dir(output: &Output) -> PathBuf {
    assert!(output.status.success(), "pretrain failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("no output")).unwrap();
    PathBuf::from(summary["run_dir"].as_str().unwrap())
}

/// Starts `world` ranks of the same command; returns rank 0's output after all have exited.
fn launch(world: usize, port: u16, command: impl Fn(usize) -> Command) -> Output {
    let others: Vec<Child> = (1..world)
        .map(|rank| {
            let mut cmd = command(rank);
            cmd.args(["--nodes", &world.to_string(), "--rank", &rank.to_string(), "--master-port", &port.to_string()]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
        })
        .collect();
    let mut cmd = command(0);
    cmd.args(["--nodes", &world.to_string(), "--rank", "0", "--master-port", &port.to_string()]);
    let output = cmd.output_within(CHILD_DEADLINE);
    for (rank, child) in others.into_iter().enumerate() {
        let status = common::wait_within(child, CHILD_DEADLINE, &format!("rank {} of {world}", rank + 1)).status;
        assert!(status.success() || !output.status.success(), "a non-zero rank failed while rank 0 succeeded");
    }
    output
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

fn checkpoint(run_dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(run_dir.join("checkpoint.safetensors")).unwrap().into_iter().collect()
}

/// The largest relative difference over all tensors of two checkpoints: max |a − b| / max |b| per
/// tensor. Tensors below 1e-6 throughout are rounding noise of gradients that are zero
/// analytically (a bias right before the projector's Linear–BatchNorm: BatchNorm removes any
/// constant shift; Adam turns that noise into ~1e-12 updates), so they are compared against 1e-6
/// instead of their own noise level.
fn max_relative_difference(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> (f64, String) {
    assert_eq!(a.len(), b.len(), "the checkpoints hold different tensors");
    let mut worst = (0.0, String::new());
    for (name, tb) in b {
        let ta = a.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let (ta, tb) = (ta.to_kind(tch::Kind::Double), tb.to_kind(tch::Kind::Double));
        let scale = tb.abs().max().double_value(&[]).max(1e-6);
        let diff = (ta - tb).abs().max().double_value(&[]) / scale;
        if diff > worst.0 {
            worst = (diff, name.clone());
        }
    }
    worst
}

/// Runs `steps` steps on one process (batch 2B) and on two Gloo processes (batch B each) and
/// returns the scratch folder (removed when dropped) and the (single, distributed) run directories in it.
fn single_and_distributed(arch: &str, name: &str, steps: &str, extra: &[&str]) -> (common::Scratch, PathBuf, PathBuf) {
    let out = scratch(name);
    let single = run_dir(&pretrain(arch, 64, &[&["--max-steps", steps, "--out"], &[out.join("single").to_str().unwrap()][..], extra].concat()).output_within(CHILD_DEADLINE));
    let port = free_port();
    let dist_out = out.join("distributed");
    let distributed = run_dir(&launch(2, port, |_| pretrain(arch, 32, &[&["--max-steps", steps, "--out", dist_out.to_str().unwrap()][..], extra].concat())));
    (out, single, distributed)
}

fn assert_same_step(single: &Path, distributed: &Path, what: &str) {
    let (a, b) = (losses(distributed), losses(single));
    assert_eq!(a.len(), b.len(), "{what}: both runs take the same number of steps");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-9 * y.abs(), "{what}: step {} loss {x} (2 processes) vs {y} (1 process)", step + 1);
    }
    let (diff, name) = max_relative_difference(&checkpoint(distributed), &checkpoint(single));
    assert!(diff <= 1e-5, "{what}: '{name}' differs by {diff:.2e} (relative) between 2 processes and 1");
}

#[test]
fn two_gloo_processes_take_the_single_process_step_of_a_vit() {
    let (_scratch, single, distributed) = single_and_distributed("vit-tiny-patch4-depth2", "vit", "3", &[]);
    assert_same_step(&single, &distributed, "ViT");
    // Only rank 0 writes: one run directory, with everything in it.
    let parent = distributed.parent().unwrap();
    assert_eq!(std::fs::read_dir(parent).unwrap().count(), 1, "one run directory for the whole group");
    for file in ["config.toml", "metrics.jsonl", "checkpoint.safetensors", "backbone.safetensors", "summary.json"] {
        assert!(distributed.join(file).exists(), "{file} missing");
    }
}

#[test]
fn two_gloo_processes_take_the_single_process_step_of_a_resnet_with_sync_batch_norm() {
    let (_scratch, single, distributed) = single_and_distributed("resnet18-small", "resnet", "3", &[]);
    assert_same_step(&single, &distributed, "ResNet with SyncBatchNorm");

    // Without synchronisation each process normalises its own half: measurably not the same step,
    // which shows the comparison above can fail.
    let (_scratch, single, unsynced) = single_and_distributed("resnet18-small", "resnet-unsynced", "1", &["--no-sync-batch-norm"]);
    let (diff, _) = max_relative_difference(&checkpoint(&unsynced), &checkpoint(&single));
    assert!(diff > 1e-4, "per-process BatchNorm should change the step, max relative difference {diff:.2e}");
}

/// torchrun's way: no distributed flags, only WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT in each rank's
/// environment; the group takes the single process's step.
#[test]
fn ranks_started_by_torchrun_variables_alone_form_the_group() {
    let arch = "vit-tiny-patch4-depth2";
    let out = scratch("torchrun");
    let single = run_dir(&pretrain(arch, 64, &["--max-steps", "2", "--out", out.join("single").to_str().unwrap()]).output_within(CHILD_DEADLINE));
    let port = free_port().to_string();
    let rank = |r: &str| {
        let mut cmd = pretrain(arch, 32, &["--max-steps", "2", "--out", out.join("torchrun").to_str().unwrap()]);
        cmd.envs([("WORLD_SIZE", "2"), ("RANK", r), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port.as_str())]);
        cmd
    };
    let mut other = rank("1");
    let other = other.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let output = rank("0").output_within(CHILD_DEADLINE);
    let other = common::wait_within(other, CHILD_DEADLINE, "rank 1");
    assert!(other.status.success(), "rank 1: {}", String::from_utf8_lossy(&other.stderr));
    assert_same_step(&single, &run_dir(&output), "a group from torchrun's variables");
}

#[test]
fn a_group_of_one_takes_the_plain_single_process_step() {
    let arch = "resnet18-small";
    let out = scratch("one");
    let plain = run_dir(&pretrain(arch, 64, &["--max-steps", "2", "--out", out.join("plain").to_str().unwrap()]).output_within(CHILD_DEADLINE));
    let group = run_dir(&launch(1, free_port(), |_| pretrain(arch, 64, &["--max-steps", "2", "--out", out.join("group").to_str().unwrap()])));
    assert_same_step(&plain, &group, "group of one");
}

#[test]
fn a_distributed_run_resumes_as_a_group_onto_the_uninterrupted_run() {
    let arch = "vit-tiny-patch4-depth2";
    let out = scratch("resume");
    let single = run_dir(&pretrain(arch, 64, &["--max-steps", "4", "--out", out.join("single").to_str().unwrap()]).output_within(CHILD_DEADLINE));
    let dist_out = out.join("distributed");
    let first = run_dir(&launch(2, free_port(), |_| pretrain(arch, 32, &["--max-steps", "2", "--out", dist_out.to_str().unwrap()])));
    let resumed = run_dir(&launch(2, free_port(), |_| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lejepa"));
        cmd.args(["pretrain", "--resume", first.to_str().unwrap(), "--max-steps", "4", "--json"]);
        cmd
    }));
    assert_eq!(resumed, first);
    assert_same_step(&single, &resumed, "resumed group");
}

/// A run may resume on another number of processes when the global batch stays the same, and continues
/// on the uninterrupted curve; another global batch is refused with the batch size that would keep it.
#[test]
fn a_run_resumes_on_another_number_of_processes_with_the_same_global_batch() {
    let arch = "vit-tiny-patch4-depth2";
    let out = scratch("resume-world");
    let single = run_dir(&pretrain(arch, 64, &["--max-steps", "4", "--out", out.join("single").to_str().unwrap()]).output_within(CHILD_DEADLINE));
    let resume = |run: &Path, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lejepa"));
        cmd.args(["pretrain", "--resume", run.to_str().unwrap(), "--max-steps", "4", "--json"]).args(extra);
        cmd
    };
    // Two processes of 32 for two steps, then one process.
    let dist_out = out.join("two-then-one");
    let first = run_dir(&launch(2, free_port(), |_| pretrain(arch, 32, &["--max-steps", "2", "--out", dist_out.to_str().unwrap()])));
    let refused = resume(&first, &[]).output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "one process of 32 is another global batch");
    assert!(stderr.contains("global batch of 64") && stderr.contains("--batch-size 64"), "{stderr}");
    assert_eq!(losses(&first).len(), 2, "a refused resume leaves the run as it was");
    let resumed = run_dir(&resume(&first, &["--batch-size", "64"]).output_within(CHILD_DEADLINE));
    assert_eq!(resumed, first);
    assert_same_step(&single, &resumed, "two processes resumed as one");
    // One process of 64 for two steps, then two processes of 32.
    let one_out = out.join("one-then-two");
    let first = run_dir(&pretrain(arch, 64, &["--max-steps", "2", "--out", one_out.to_str().unwrap()]).output_within(CHILD_DEADLINE));
    let resumed = run_dir(&launch(2, free_port(), |_| resume(&first, &["--batch-size", "32"])));
    assert_same_step(&single, &resumed, "one process resumed as two");
}

/// A master port held by another program: rank 0 says the port is in use, the other ranks (which reach
/// that program instead of rank 0's store) stop after the timeout instead of waiting for ever.
#[test]
fn a_master_port_in_use_is_a_clear_error_on_every_rank() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let out = scratch("port-in-use");
    let started = Instant::now();
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            pretrain("vit-tiny-patch4-depth2", 32, &["--max-steps", "1", "--out", out.to_str().unwrap(), "--dist-timeout", "5"])
                .args(["--nodes", "2", "--rank", &rank.to_string(), "--master-port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let output = common::wait_within(child, CHILD_DEADLINE, &format!("rank {rank}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "rank {rank} must fail: {stderr}");
        let expected = if rank == 0 { "is in use by another program" } else { "no answer within" };
        assert!(stderr.contains(expected) && stderr.contains("--master-port"), "rank {rank}: {stderr}");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "both ranks stop soon after the 5 s timeout: {:?}", started.elapsed());
    drop(squatter);
}

#[test]
fn when_a_rank_dies_the_others_stop_with_a_clear_message() {
    let out = scratch("dies");
    let port = free_port();
    let group = ["--nodes", "2", "--master-port", &port.to_string()];
    let run = |rank: &str| {
        let mut cmd = pretrain("resnet18-small", 32, &["--max-steps", "50", "--dist-timeout", "60", "--out", out.to_str().unwrap()]);
        cmd.args(group).args(["--rank", rank]).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let (rank0, mut rank1) = (run("0"), run("1"));
    // Rank 1 is killed (SIGKILL, as the OOM killer would) once the group has taken a step together.
    let metrics = || std::fs::read_dir(&*out).ok()?.flatten().map(|e| e.path().join("metrics.jsonl")).find(|p| p.exists());
    let deadline = Instant::now() + Duration::from_secs(300);
    while !metrics().is_some_and(|p| std::fs::read_to_string(p).is_ok_and(|text| text.lines().count() >= 1)) {
        assert!(Instant::now() < deadline, "the group took no step in 5 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let started = Instant::now();
    let output = common::wait_within(rank0, Duration::from_secs(120), "rank 0 after rank 1 was killed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "rank 0 must fail when rank 1 is gone");
    assert!(stderr.contains("rank 0 of 2") && stderr.contains("another process"), "unclear message: {stderr}");
    assert!(!stderr.contains("stack backtrace"), "a one-line error, not a crash report: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "rank 0 must not wait for the whole timeout");

    // A group that never fills up gives up after --dist-timeout.
    let started = Instant::now();
    let mut alone = pretrain("vit-tiny-patch4-depth2", 32, &["--nodes", "2", "--rank", "0", "--dist-timeout", "2"]);
    let output = alone.args(["--master-port", &free_port().to_string(), "--out", out.to_str().unwrap()]).output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("could not join"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "the rendezvous must time out");
}

#[test]
fn launch_settings_come_from_flags_or_torchrun_variables() {
    use lejepa::distributed::Launch;
    let timeout = Duration::from_secs(5);
    // No world size anywhere: not distributed. An explicit world of one: a group of one.
    if std::env::var("WORLD_SIZE").is_err() {
        assert_eq!(Launch::resolve(None, None, None, None, false, timeout).unwrap(), None);
    }
    let one = Launch::resolve(Some(1), None, None, None, false, timeout).unwrap().unwrap();
    assert_eq!((one.world, one.rank, one.backend.as_str()), (1, 0, "gloo"));
    let launch = Launch::resolve(Some(4), Some(3), Some("10.0.0.1".into()), Some(1234), true, timeout).unwrap().unwrap();
    assert_eq!((launch.world, launch.rank, launch.master_addr.as_str(), launch.master_port, launch.backend.as_str()), (4, 3, "10.0.0.1", 1234, "nccl"));
    let err = Launch::resolve(Some(2), Some(2), None, None, false, timeout).unwrap_err().to_string();
    assert!(err.contains("--rank 2"), "{err}");
}

/// A rank started with other flags than the rest would silently take another step: every rank stops
/// before the first step, naming the keys that differ, and no run directory is made.
#[test]
fn ranks_started_with_different_configurations_refuse_to_train() {
    let out = scratch("mismatch");
    let port = free_port();
    let started = Instant::now();
    let output = launch(2, port, |rank| {
        let lr = if rank == 0 { "0.002" } else { "0.004" };
        pretrain("vit-tiny-patch4-depth2", 32, &["--max-steps", "5", "--lr", lr, "--dist-timeout", "60", "--out", out.to_str().unwrap()])
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "rank 0 trained with a rank of another configuration");
    assert!(stderr.contains("rank 0: the configuration differs from rank 1's: lr (0.004 → 0.002)"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "the ranks must not wait for a timeout");
    assert!(std::fs::read_dir(&*out).map_or(true, |mut d| d.next().is_none()), "a run directory was made");
}
