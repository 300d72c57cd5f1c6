//! `lejepa pretrain`: the training loop. Read it top to bottom: set up the run directory, data,
//! model, objective and optimizer; then for each step take a batch of views, compute z, the loss,
//! step AdamW; log, checkpoint, evaluate the online probe once per epoch.

pub mod config;
pub mod memory;
pub mod optim;
pub mod plots;
pub mod schedule;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

use crate::data::{Dataset, Split, stratified_subset};
use crate::data::loader::{Loader, LoaderConfig};
use crate::distributed::ProcessGroup;
use crate::models::{Arch, Encoder, copy_variables};
use crate::objective::LeJepaObjective;
use crate::sigreg::{NormalityTest, Reduction, SigReg};
use config::Config;
use optim::AdamW;

/// Set by Ctrl-C: the loop saves a checkpoint and stops after the current step.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn parse_device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => bail!("unknown device '{other}'; use cpu, cuda or cuda:N"),
        },
    })
}

/// LayerNorm + Linear on detached backbone features (MINIMAL.md's online probe).
pub struct LinearProbe {
    norm: nn::LayerNorm,
    linear: nn::Linear,
}

impl LinearProbe {
    pub fn new(path: &nn::Path, in_dim: i64, classes: i64) -> LinearProbe {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let uniform = nn::Init::Uniform { lo: -bound, up: bound };
        LinearProbe {
            norm: nn::layer_norm(path / "norm", vec![in_dim], Default::default()),
            linear: nn::linear(path / "linear", in_dim, classes, nn::LinearConfig { ws_init: uniform, bs_init: Some(uniform), bias: true }),
        }
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        features.apply(&self.norm).apply(&self.linear)
    }
}

/// The LeJEPA forward pass of one batch: global views `[V_g·N, C, S_g, S_g]` and local views
/// `[V_l·N, C, S_l, S_l]` (view-major) → the loss terms, and the backbone features of the global
/// views (for the online probe). Encoder and projector run under bf16 autocast when `bf16`; the
/// objective is computed in f32 (f64 for an f64 model). With a process group the batch is this
/// process's shard of the global batch (see [`crate::distributed`]).
pub fn lejepa_forward(
    encoder: &Encoder,
    objective: &LeJepaObjective,
    global: &Tensor,
    local: Option<&Tensor>,
    global_views: usize,
    step: u64,
    bf16: bool,
    train: bool,
    group: Option<&ProcessGroup>,
) -> Result<(crate::objective::LossTerms, crate::models::Features)> {
    let n = global.size()[0] / global_views as i64;
    let autocast = bf16.then(|| crate::autocast::Bf16Autocast::new(global.device()));
    let global_features = encoder.backbone.forward(global, train);
    let mut embeddings = vec![global_features.embedding.shallow_clone()];
    if let Some(local) = local {
        embeddings.push(encoder.backbone.forward(local, train).embedding);
    }
    let embeddings = Tensor::cat(&embeddings, 0); // [V·N, D], view-major
    let z = encoder.projector.forward(&embeddings, train); // [V·N, K]
    drop(autocast);
    let kind = if z.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let z = z.to_kind(kind).view([-1, n, z.size()[1]]); // [V, N, K]
    Ok((objective.forward_in_group(&z, global_views, step, group)?, global_features))
}

/// What a run reports at the end (and prints as the last line of stdout with `--json`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub final_loss: Option<f64>,
    pub final_invariance: Option<f64>,
    pub final_sigreg: Option<f64>,
    pub lambda: f64,
    pub probe_accuracy: Option<f64>,
    pub checkpoint: PathBuf,
    pub interrupted: bool,
    pub wall_seconds: f64,
    /// Fraction of step time spent waiting for the data loader.
    pub data_wait_fraction: f64,
    /// Memory a training step was estimated to take before training (CPU), and the process's peak resident memory.
    pub estimated_step_bytes: Option<u64>,
    pub peak_resident_bytes: Option<u64>,
    /// Image files left out as unreadable, at the start-up scan (`--skip-bad`) or during the run.
    pub unreadable_files: Vec<String>,
}

#[derive(Serialize)]
struct StepRecord {
    step: u64,
    epoch: u64,
    loss: f64,
    invariance: f64,
    sigreg: f64,
    lr: f64,
    images_per_second: f64,
    data_wait_seconds: f64,
    step_seconds: f64,
}

/// Everything that changes during training, in the shape a checkpoint stores it.
struct State {
    encoder: Encoder,
    optimizer: AdamW,
    probe: Option<(nn::VarStore, LinearProbe, AdamW)>,
}

pub fn trainable(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The first trainable variable (by name, as the checkpoint names it: the stores' prefix, then its name) whose
/// gradient holds a NaN or an Inf; one device sync when none does.
fn non_finite_gradient<'a>(stores: impl Iterator<Item = (&'a str, &'a nn::VarStore)>) -> Option<String> {
    let grads: Vec<(String, Tensor)> = stores
        .flat_map(|(prefix, vs)| trainable(vs).into_iter().map(move |(name, t)| (format!("{prefix}{name}"), t.grad())))
        .filter(|(_, g)| g.defined())
        .collect();
    if grads.is_empty() {
        return None;
    }
    let finite: Vec<Tensor> = grads.iter().map(|(_, g)| g.isfinite().all()).collect();
    if Tensor::stack(&finite, 0).all().int64_value(&[]) == 1 {
        return None;
    }
    grads.into_iter().zip(finite).find(|(_, ok)| ok.int64_value(&[]) == 0).map(|((name, _), _)| name)
}

impl State {
    fn tensors(&self, step: u64) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self.encoder.vs.variables().into_iter().collect();
        all.extend(self.optimizer.state("adamw"));
        if let Some((vs, _, opt)) = &self.probe {
            all.extend(vs.variables().into_iter().map(|(n, t)| (format!("probe.{n}"), t)));
            all.extend(opt.state("probe_adamw"));
        }
        all.push(("step".into(), Tensor::from(step as i64)));
        all.into_iter().map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous())).collect()
    }

    /// Makes every process's state rank 0's: weights, BatchNorm statistics, optimizer moments and
    /// counters, and the step (returned).
    fn broadcast_from_rank0(&mut self, group: &ProcessGroup, step: u64) -> Result<u64> {
        // Ordered by name, so every rank sends and receives the same tensor at the same turn.
        let by_name = |vs: &nn::VarStore| {
            let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named.into_iter().map(|(_, t)| t).collect::<Vec<Tensor>>()
        };
        let mut tensors = by_name(&self.encoder.vs);
        tensors.extend(self.optimizer.moments());
        if let Some((vs, _, opt)) = &self.probe {
            tensors.extend(by_name(vs));
            tensors.extend(opt.moments());
        }
        let counters = Tensor::from_slice(&[step as i64, self.optimizer.steps, self.probe.as_ref().map_or(0, |p| p.2.steps)]);
        tensors.push(counters.shallow_clone());
        group.broadcast_from_rank0(&tensors)?;
        let counters = Vec::<i64>::try_from(counters)?;
        self.optimizer.steps = counters[1];
        if let Some((_, _, opt)) = &mut self.probe {
            opt.steps = counters[2];
        }
        Ok(counters[0] as u64)
    }

    /// Checkpoint = one safetensors file (weights, optimizer moments, probe, step), plus the
    /// backbone alone under timm's names; each written to a temporary file and renamed.
    fn save(&self, dir: &Path, step: u64) -> Result<PathBuf> {
        let path = dir.join("checkpoint.safetensors");
        let tmp = dir.join("checkpoint.safetensors.tmp");
        Tensor::write_safetensors(&self.tensors(step), &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        self.encoder.save_backbone(&dir.join("backbone.safetensors"))?;
        Ok(path)
    }

    /// Restores everything from a checkpoint; returns the step to continue from.
    fn load(&mut self, path: &Path) -> Result<u64> {
        let shown = path.display();
        let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| anyhow::anyhow!("{shown}: not a readable checkpoint ({e})"))?
            .into_iter()
            .collect();
        let get = |name: &str| -> Result<Tensor> {
            tensors.get(name).map(|t| t.shallow_clone()).with_context(|| format!("{shown}: no tensor '{name}' (a checkpoint of another config?)"))
        };
        copy_variables(&self.encoder.vs, "", &tensors, path)?;
        self.optimizer.load_state("adamw", &get)?;
        if let Some((vs, _, opt)) = &mut self.probe {
            let stored = tensors.get("probe.norm.weight").map(Tensor::size);
            if stored.is_some() && stored != vs.variables().get("norm.weight").map(Tensor::size) {
                // A ResNet run from before its probe read the last two blocks (512 features, now 1,024):
                // the online probe only reports, so it starts afresh; everything else resumes exactly.
                eprintln!("{shown}: its online probe reads features of another width; the online probe restarts");
            } else {
                copy_variables(vs, "probe.", &tensors, path)?;
                opt.load_state("probe_adamw", &get)?;
            }
        }
        Ok(get("step")?.int64_value(&[]) as u64)
    }
}

/// A fresh numbered run directory `out/NNN-<arch>`.
pub fn new_run_dir(out: &Path, arch: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for n in 1.. {
        let dir = out.join(format!("{n:03}-{arch}"));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
        ensure!(n < 100_000, "{}: cannot create a run directory", out.display());
    }
    unreachable!()
}

/// Accuracy of the online probe on the evaluation images, backbone in eval mode.
fn probe_accuracy(encoder: &Encoder, probe: &LinearProbe, eval: &Split, crop: &crate::data::augment::MultiCrop, device: Device) -> Result<Option<f64>> {
    let Some(labels) = eval.labels.as_ref().filter(|l| !l.is_empty()) else { return Ok(None) };
    let features = crate::eval::features(&encoder.backbone, eval, crop, crate::eval::FeatureKind::Probe, device)?;
    let features = features.to_device(device).to_kind(probe.linear.ws.kind());
    let predicted = tch::no_grad(|| probe.forward(&features).argmax(-1, false).to_device(Device::Cpu));
    let correct = predicted.eq_tensor(&Tensor::from_slice(labels)).sum(Kind::Int64).int64_value(&[]);
    Ok(Some(correct as f64 / labels.len() as f64))
}

/// Runs a pretraining run in `run_dir` (an existing, empty folder), or with `resume` continues the
/// one there from its checkpoint, and returns its summary. With a process group this process is
/// one rank of a data-parallel run: it trains on its shard of every global batch, and only rank 0
/// reads and writes the run directory.
pub fn pretrain(config: &Config, run_dir: &Path, resume: bool, dataset: &Dataset, group: Option<&Arc<ProcessGroup>>) -> Result<Summary> {
    let started = Instant::now();
    let (rank, world) = group.map_or((0, 1), |g| (g.rank, g.world));
    let leader = rank == 0;
    if let Some(threads) = config.threads {
        tch::set_num_threads(threads as i32);
    }
    let device = parse_device(&config.device)?;
    ensure!(device == Device::Cpu || tch::Cuda::is_available(), "--device {}: CUDA is not available on this machine", config.device);
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // a second Ctrl-C: stop now
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)");
    });
    STOP.store(false, Ordering::SeqCst);

    let run_dir = run_dir.to_path_buf();
    let crop = Arc::new(config.multicrop(dataset)?);
    if leader {
        std::fs::write(run_dir.join("config.toml"), toml::to_string(config)?)?;
        let meta = serde_json::json!({
            "lejepa_version": env!("CARGO_PKG_VERSION"), "git_commit": env!("LEJEPA_GIT_COMMIT"),
            "libtorch_version": env!("LIBTORCH_VERSION"), "device": config.device, "processes": world,
        });
        std::fs::write(run_dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
        std::fs::write(run_dir.join("augment.toml"), toml::to_string(&*crop)?)?; // the exact views, for the record and for evaluation
    }

    // Data, model, objective, optimizers.
    let arch = Arch::from_name(&config.arch)?;
    tch::manual_seed(config.seed as i64);
    let mut encoder = Encoder::new(device, arch, dataset.channels as i64, crop.global.size as i64, config.drop_path, &config.projector)?;
    let f64_model = config.precision == "f64";
    if f64_model {
        encoder.vs.double();
    }
    let optimizer = AdamW::new(trainable(&encoder.vs), config.weight_decay);
    let labeled = dataset.train.labels.is_some() && !dataset.classes.is_empty();
    let probe = (config.online_probe && labeled).then(|| {
        let mut vs = nn::VarStore::new(Device::Cpu); // initialised on the CPU, as the encoder
        let probe = LinearProbe::new(&vs.root(), encoder.backbone.probe_dim(), dataset.classes.len() as i64);
        vs.set_device(device);
        if f64_model {
            vs.double();
        }
        let optimizer = AdamW::new(trainable(&vs), config.probe_weight_decay);
        (vs, probe, optimizer)
    });
    let mut state = State { encoder, optimizer, probe };
    let sigreg = SigReg {
        test: NormalityTest::from_name("epps-pulley", config.t_max, config.knots)?,
        slices: config.slices,
        seed: config.seed,
        reduction: Reduction::Mean,
    };
    let objective = LeJepaObjective::new(config.lambda, sigreg)?;

    // Steps: the schedule spans all epochs (or `steps`); max_steps may stop earlier.
    let micro_batches_per_epoch = dataset.train.len() / (config.batch_size * world);
    let steps_per_epoch = (micro_batches_per_epoch / config.grad_accum) as u64;
    ensure!(
        steps_per_epoch >= 1,
        "{} training images are too few for batch_size {} × grad_accum {} × {world} process(es)",
        dataset.train.len(), config.batch_size, config.grad_accum
    );
    let total_steps = config.steps.unwrap_or(steps_per_epoch * config.epochs as u64);
    let last_step = config.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let warmup_steps = config.warmup_steps.unwrap_or((config.warmup_epochs * steps_per_epoch as f64).round() as u64);

    // Will it fit? One forward/backward at 2 and 4 samples of the real views, extrapolated (CPU).
    let mut estimated_step_bytes = None;
    if device == Device::Cpu {
        let (c, sg, sl) = (dataset.channels as i64, crop.global.size as i64, crop.local.size as i64);
        let vl = crop.local_views as i64;
        estimated_step_bytes = memory::estimate_step_bytes(config.batch_size, |n| {
            let n = n as i64;
            let global = Tensor::zeros([crop.global_views as i64 * n, c, sg, sg], (Kind::Float, device));
            let local = (vl > 0).then(|| Tensor::zeros([vl * n, c, sl, sl], (Kind::Float, device)));
            let bf16 = config.precision == "bf16";
            if let Ok((terms, _)) = lejepa_forward(&state.encoder, &objective, &global, local.as_ref(), crop.global_views, 0, bf16, false, None) {
                terms.loss.backward();
            }
        });
        if let Some(bytes) = estimated_step_bytes {
            eprintln!("estimated memory of a training step: {:.2} GB", bytes as f64 / 1e9);
            memory::ensure_fits(bytes, &format!("{} at batch size {}", config.arch, config.batch_size))?;
        }
    }

    if let (Some(group), true) = (group, config.sync_batch_norm) {
        state.encoder.sync_batch_norm(group);
    }

    let checkpoint_path = run_dir.join("checkpoint.safetensors");
    let mut step = 0;
    if resume && leader {
        let leftover = run_dir.join("checkpoint.safetensors.tmp");
        if leftover.exists() {
            // A write interrupted by a kill: the checkpoint beside it is the last complete one.
            std::fs::remove_file(&leftover).with_context(|| format!("removing {}", leftover.display()))?;
            eprintln!("removed {}, left by a checkpoint write that was interrupted", leftover.display());
        }
        ensure!(checkpoint_path.exists(), "--resume {}: no checkpoint.safetensors there (the run saved none yet?)", run_dir.display());
        step = state.load(&checkpoint_path)?;
        if step >= last_step {
            eprintln!("{}: the run finished at step {step} of {last_step}; to train it longer, resume with a larger --steps (--epochs for a run counted in epochs)", run_dir.display());
        } else {
            eprintln!("resuming {} at step {step} of {last_step}", run_dir.display());
        }
    }
    if let Some(group) = group {
        // Same start everywhere (as DDP): rank 0's fresh weights, or its checkpoint.
        step = state.broadcast_from_rank0(group, step)?;
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut first_loss = None; // the run's first, also when it resumes
    let mut metrics: Box<dyn Write> = if leader {
        // Keep the records up to the checkpoint: steps logged after it (a killed run) are redone.
        let kept: String = std::fs::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|r| r["step"].as_u64()).is_some_and(|s| s <= step))
            .map(|line| format!("{line}\n"))
            .collect();
        first_loss = kept.lines().find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()?["loss"].as_f64());
        std::fs::write(&metrics_path, kept)?;
        Box::new(std::fs::OpenOptions::new().append(true).create(true).open(&metrics_path)?)
    } else {
        Box::new(std::io::sink())
    };

    let epoch_of = |s: u64| s / steps_per_epoch;
    // The online probe's evaluation images: a fixed stratified subset, so every class counts even
    // where the test split is sorted by class.
    let eval_split = stratified_subset(&dataset.test, config.eval_images.unwrap_or(usize::MAX));
    let loader = Loader::new(
        dataset.train.clone(), // an Arc: no copy of the images
        crop.clone(),
        LoaderConfig {
            batch_size: config.batch_size,
            shard: (rank, world),
            batches_per_epoch: steps_per_epoch as usize * config.grad_accum,
            seed: config.seed,
            start: (epoch_of(step), (step % steps_per_epoch) as usize * config.grad_accum),
            workers: config.workers,
            prefetch: 2,
        },
    )?;

    let progress = if leader { indicatif::ProgressBar::new(last_step) } else { indicatif::ProgressBar::hidden() }.with_position(step);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap(),
    );
    let vg = crop.global_views as i64;
    let mut last_terms = None;
    let (mut total_wait, mut total_step_time) = (0.0, 0.0);
    let mut probe_acc = None;
    let mut interrupted = false;
    let mut warmup_times = Vec::new();
    // Fault injection for the test suite: a crash of this process at this step.
    let crash_at_step: Option<u64> = std::env::var("LEJEPA_FAULT_EXIT_STEP").ok().and_then(|s| s.parse().ok());

    // The parameters whose gradients are averaged over the processes, in the same order on every rank.
    let mut averaged_params: Vec<Tensor> = Vec::new();
    if group.is_some() {
        averaged_params.extend(trainable(&state.encoder.vs).into_iter().map(|(_, t)| t));
        if let Some((vs, _, _)) = &state.probe {
            averaged_params.extend(trainable(vs).into_iter().map(|(_, t)| t));
        }
    }
    while step < last_step {
        if crash_at_step == Some(step) {
            eprintln!("LEJEPA_FAULT_EXIT_STEP: rank {rank} exits at step {step}");
            std::process::exit(3);
        }
        let step_started = Instant::now();
        // Drop-path masks are drawn from libtorch's generator: seed it per step so a resumed run
        // draws what an uninterrupted one would (and per rank, so shards draw independent masks).
        tch::manual_seed((config.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((rank as u64) << 48)) as i64);
        let lr = schedule::learning_rate(step, total_steps, warmup_steps, config.lr, config.final_lr_ratio);
        state.optimizer.zero_grad();
        if let Some((_, _, opt)) = &mut state.probe {
            opt.zero_grad();
        }
        let mut wait = 0.0;
        let (mut loss_sum, mut inv_sum, mut sig_sum) = (0.0, 0.0, 0.0);
        for _ in 0..config.grad_accum {
            let waited = Instant::now();
            let batch = loader.next();
            wait += waited.elapsed().as_secs_f64();
            let local = batch.local.as_ref().map(|l| l.to_device(device));
            // Copied before the step is queued (a copy from host memory waits for queued GPU work).
            let targets = batch.labels.as_ref().filter(|_| state.probe.is_some()).map(|l| l.to_device(device).repeat([vg]));
            let (terms, global) = lejepa_forward(
                &state.encoder, &objective, &batch.global.to_device(device), local.as_ref(), crop.global_views, step, config.precision == "bf16", true,
                group.map(|g| &**g),
            )?;
            (&terms.loss / config.grad_accum as f64).f_backward().map_err(|e| anyhow::anyhow!("step {step}: backward failed: {e}"))?;
            // Online probe on detached global-view features.
            if let (Some((_, probe, _)), Some(targets)) = (&state.probe, &targets) {
                let logits = probe.forward(&global.probe.detach().to_kind(if f64_model { Kind::Double } else { Kind::Float }));
                (logits.cross_entropy_for_logits(targets) / config.grad_accum as f64).backward();
            }
            // Read only now: on a GPU reading a value waits for the queued work, and the backward
            // pass is queued already. A non-finite loss still stops before the optimizer step.
            let mut values = [terms.loss.double_value(&[]), terms.invariance.double_value(&[]), terms.sigreg.double_value(&[])];
            if let Some(group) = group {
                // The global batch's loss (the mean of the shards'), the same on every rank.
                let reduced = Tensor::from_slice(&values);
                group.sum_in_place(&[&reduced])?;
                values = <[f64; 3]>::try_from(Vec::<f64>::try_from(reduced / world as f64)?).unwrap();
            }
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                let term = ["loss", "invariance", "SIGReg"][bad];
                bail!(
                    "step {step}: the {term} is not finite (loss {}, invariance {}, SIGReg {}); stopped without saving. \
                     The last good checkpoint ({}) is intact; try a lower --lr",
                    values[0], values[1], values[2], checkpoint_path.display()
                );
            }
            loss_sum += values[0];
            inv_sum += values[1];
            sig_sum += values[2];
        }
        if let Some(group) = group {
            group.average_gradients(&averaged_params)?;
        }
        // A finite loss can still give a non-finite gradient (an overflow, a bad weight): it never reaches the weights.
        let stores = [Some(("", &state.encoder.vs)), state.probe.as_ref().map(|(vs, _, _)| ("probe.", vs))];
        if let Some(name) = non_finite_gradient(stores.into_iter().flatten()) {
            bail!(
                "step {step}: the gradient of {name} is not finite (the loss was {:.4}); stopped without saving. \
                 The last good checkpoint ({}) is intact; try a lower --lr",
                loss_sum / config.grad_accum as f64, checkpoint_path.display()
            );
        }
        state.optimizer.step(lr);
        if let Some((_, _, opt)) = &mut state.probe {
            opt.step(config.probe_lr);
        }
        let accum = config.grad_accum as f64;
        let (loss, invariance, sigreg) = (loss_sum / accum, inv_sum / accum, sig_sum / accum);
        first_loss.get_or_insert(loss);
        last_terms = Some((loss, invariance, sigreg));
        step += 1;

        let step_seconds = step_started.elapsed().as_secs_f64();
        total_wait += wait;
        total_step_time += step_seconds;
        let images_per_second = (config.batch_size * config.grad_accum) as f64 / step_seconds;
        let record = StepRecord { step, epoch: epoch_of(step - 1), loss, invariance, sigreg, lr, images_per_second, data_wait_seconds: wait, step_seconds };
        writeln!(metrics, "{}", serde_json::to_string(&record)?)?;
        progress.set_message(format!("loss {loss:.4} inv {invariance:.4} sigreg {sigreg:.3} lr {lr:.2e} {images_per_second:.0} img/s"));
        progress.set_position(step);
        // Time estimate from this process's second and third steps (the first also warms up kernels and memory).
        if warmup_times.len() < 3 {
            warmup_times.push(step_seconds);
            if leader && warmup_times.len() == 3 {
                let per_step = (warmup_times[1] + warmup_times[2]) / 2.0;
                let duration = |steps: u64| {
                    let minutes = steps as f64 * per_step / 60.0;
                    if minutes < 120.0 { format!("{minutes:.0} min") } else { format!("{:.1} h", minutes / 60.0) }
                };
                progress.suspend(|| eprintln!(
                    "a step takes about {per_step:.1} s: the {} steps left ≈ {}; one epoch ({steps_per_epoch} steps) ≈ {}",
                    last_step - step, duration(last_step - step), duration(steps_per_epoch)
                ));
            }
        }

        let end_of_epoch = step % steps_per_epoch == 0 || step == last_step;
        // Every rank evaluates (the same weights, the same images), so none waits in a collective
        // while rank 0 alone works through the evaluation set.
        if end_of_epoch {
            if let Some((_, probe, _)) = &state.probe {
                match probe_accuracy(&state.encoder, probe, &eval_split, &crop, device) {
                    Ok(Some(acc)) => {
                        probe_acc = Some(acc);
                        writeln!(metrics, "{}", serde_json::json!({"step": step, "epoch": epoch_of(step - 1), "probe_accuracy": acc}))?;
                        if leader {
                            progress.suspend(|| eprintln!("epoch {} step {step}: loss {loss:.4}, online probe accuracy {:.2}%", epoch_of(step - 1), 100.0 * acc));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => progress.suspend(|| eprintln!("warning: no online probe accuracy at step {step}: {e:#}")),
                }
            }
        }
        interrupted = STOP.load(Ordering::SeqCst);
        if let Some(group) = group {
            // Stop together when any process was interrupted.
            let flag = Tensor::from(interrupted as i64);
            group.sum_in_place(&[&flag])?;
            interrupted = flag.int64_value(&[]) > 0;
        }
        if leader && (step % config.checkpoint_every == 0 || step == last_step || interrupted) {
            state.save(&run_dir, step)?;
            if config.keep_backbones {
                std::fs::copy(run_dir.join("backbone.safetensors"), run_dir.join(format!("backbone-step{step}.safetensors")))?;
            }
        }
        if interrupted {
            break;
        }
    }
    progress.finish_and_clear();
    if leader && !checkpoint_path.exists() {
        state.save(&run_dir, step)?;
    }

    let summary = Summary {
        run_dir: run_dir.clone(),
        steps: step,
        first_loss,
        final_loss: last_terms.map(|t| t.0),
        final_invariance: last_terms.map(|t| t.1),
        final_sigreg: last_terms.map(|t| t.2),
        lambda: config.lambda,
        probe_accuracy: probe_acc,
        checkpoint: checkpoint_path,
        interrupted,
        wall_seconds: started.elapsed().as_secs_f64(),
        data_wait_fraction: if total_step_time > 0.0 { total_wait / total_step_time } else { 0.0 },
        estimated_step_bytes,
        peak_resident_bytes: memory::peak_resident_bytes(),
        unreadable_files: dataset.unreadable(),
    };
    if leader {
        std::fs::write(run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
        if let Err(e) = plots::draw(&metrics_path, &run_dir) {
            eprintln!("warning: no plots drawn: {e:#}");
        }
    }
    if let Some(group) = group {
        group.barrier()?; // everyone leaves once rank 0's last checkpoint is on disk
    }
    Ok(summary)
}
