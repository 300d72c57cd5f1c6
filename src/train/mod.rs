//! `lejepa pretrain`: the training loop. Read it top to bottom: set up the run directory, data,
//! model, objective and optimizer; then for each step take a batch of views, compute z, the loss,
//! step AdamW; log, checkpoint, evaluate the online probe once per epoch.

pub mod config;
pub mod memory;
pub mod plots;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

use crate::data::augment::MultiCrop;
use crate::data::{Dataset, Split, stratified_subset};
use crate::data::loader::{Loader, LoaderConfig};
use crate::distributed::ProcessGroup;
use crate::models::{Arch, Encoder, LinearProbe, copy_variables};
use crate::objective::LeJepaObjective;
use crate::sigreg::{NormalityTest, Reduction, SigReg};
use config::{Config, Precision};
use crate::optim::{AdamW, schedule, trainable};

/// Set by Ctrl-C: the loop saves a checkpoint and stops after the current step.
static STOP: AtomicBool = AtomicBool::new(false);

/// A device named cpu, cuda or cuda:N.
pub fn parse_device(name: &str) -> Result<Device> {
    Ok(name.parse::<config::ComputeDevice>()?.into())
}

/// The views of one batch, view-major (view v of sample n is row v·N + n): global `[V_g·N, C, S_g, S_g]`,
/// local `[V_l·N, C, S_l, S_l]` or none.
pub struct Views<'a> {
    pub global: &'a Tensor,
    pub local: Option<&'a Tensor>,
    pub global_views: usize,
}

/// How a forward pass runs: the step (it seeds SIGReg's directions), bf16 autocast or not, train or eval
/// mode, and the process group whose shards make the global batch (see [`crate::distributed`]).
#[derive(Clone, Copy)]
pub struct ForwardOptions<'a> {
    pub step: u64,
    pub bf16: bool,
    pub train: bool,
    pub group: Option<&'a ProcessGroup>,
}

/// The LeJEPA forward pass of one batch: views → encoder → projector → the loss terms, and what the
/// online probe reads of the global views (the embedding layer's output where there is one, as in
/// MINIMAL.md; else the backbone's probe features). Encoder and projector run under bf16 autocast when
/// asked; the objective is computed in f32 (f64 for an f64 model).
pub fn lejepa_forward(
    encoder: &Encoder,
    objective: &LeJepaObjective,
    views: &Views,
    options: ForwardOptions,
) -> Result<(crate::objective::LossTerms, Tensor)> {
    let n = views.global.size()[0] / views.global_views as i64;
    let autocast = options.bf16.then(|| crate::autocast::Bf16Autocast::new(views.global.device())).transpose()?;
    let global_features = encoder.backbone.forward(views.global, options.train);
    let mut embeddings = vec![global_features.embedding.shallow_clone()];
    if let Some(local) = views.local {
        embeddings.push(encoder.backbone.forward(local, options.train).embedding);
    }
    let embeddings = encoder.projector.embed(&Tensor::cat(&embeddings, 0)); // [V·N, D], view-major
    let z = encoder.projector.mlp(&embeddings, options.train); // [V·N, K]
    drop(autocast);
    let probe_features = match OnlineProbeInput::of(encoder) {
        OnlineProbeInput::Embedding(_) => embeddings.narrow(0, 0, views.global.size()[0]),
        OnlineProbeInput::BackboneProbe(_) => global_features.probe,
    };
    let kind = if z.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let z = z.to_kind(kind).view([-1, n, z.size()[1]]); // [V, N, K]
    Ok((objective.forward_in_group(&z, views.global_views, options.step, options.group)?, probe_features))
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
    fn zero_grad(&mut self) {
        self.optimizer.zero_grad();
        if let Some((_, _, optimizer)) = &mut self.probe {
            optimizer.zero_grad();
        }
    }

    /// The trainable tensors of the encoder, then of the online probe.
    fn trainable_tensors(&self) -> Vec<Tensor> {
        let mut tensors: Vec<Tensor> = trainable(&self.encoder.vs).into_iter().map(|(_, t)| t).collect();
        if let Some((vs, _, _)) = &self.probe {
            tensors.extend(trainable(vs).into_iter().map(|(_, t)| t));
        }
        tensors
    }

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
            copy_variables(vs, "probe.", &tensors, path)?;
            opt.load_state("probe_adamw", &get)?;
        }
        Ok(get("step")?.int64_value(&[]) as u64)
    }
}

/// A fresh numbered run directory `out/NNN-<arch>`.
pub fn new_run_dir(out: &Path, arch: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for n in 1..100_000 {
        let dir = out.join(format!("{n:03}-{arch}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("{}: 99,999 run directories exist already", out.display())
}

/// Step counts: the learning-rate schedule spans `total` steps (all epochs, or `steps`); the run stops
/// at `last` (`max_steps` may stop it earlier).
struct Schedule {
    steps_per_epoch: u64,
    total: u64,
    last: u64,
    warmup: u64,
    peak_lr: f64,
    final_lr_ratio: f64,
}

/// Optimizer steps in an epoch of `train_images` shared by `world` processes; an error when not even one fits.
pub fn steps_per_epoch(config: &Config, train_images: usize, world: usize) -> Result<u64> {
    let micro_batches_per_epoch = train_images / (config.batch_size * world);
    let steps = (micro_batches_per_epoch / config.grad_accum) as u64;
    ensure!(
        steps >= 1,
        "{train_images} training images are too few for batch_size {} × grad_accum {} × {world} process(es); use --batch-size {} or less",
        config.batch_size, config.grad_accum, (train_images / (config.grad_accum * world)).max(2)
    );
    Ok(steps)
}

impl Schedule {
    fn of(config: &Config, train_images: usize, world: usize) -> Result<Schedule> {
        let steps_per_epoch = steps_per_epoch(config, train_images, world)?;
        let total = config.steps.unwrap_or(steps_per_epoch * config.epochs as u64);
        Ok(Schedule {
            steps_per_epoch,
            total,
            last: config.max_steps.map_or(total, |m| m.min(total)),
            warmup: config.warmup_steps.unwrap_or((config.warmup_epochs * steps_per_epoch as f64).round() as u64),
            peak_lr: config.lr,
            final_lr_ratio: config.final_lr_ratio,
        })
    }

    fn learning_rate(&self, step: u64) -> f64 {
        schedule::learning_rate(step, self.total, self.warmup, self.peak_lr, self.final_lr_ratio)
    }

    fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch
    }

    /// What is left at `step`, at `per_step` seconds a step, and what an epoch takes.
    fn time_estimate(&self, step: u64, per_step: f64) -> String {
        let duration = |steps: u64| {
            let minutes = steps as f64 * per_step / 60.0;
            if minutes < 120.0 { format!("{minutes:.0} min") } else { format!("{:.1} h", minutes / 60.0) }
        };
        format!(
            "a step takes about {per_step:.1} s: the {} steps left ≈ {}; one epoch ({} steps) ≈ {}",
            self.last - step, duration(self.last - step), self.steps_per_epoch, duration(self.steps_per_epoch)
        )
    }
}

/// What one training step gives back: the global batch's loss terms, and its time waiting for data.
struct StepOutcome {
    loss: f64,
    invariance: f64,
    sigreg: f64,
    lr: f64,
    data_wait_seconds: f64,
}

/// A pretraining run in progress: its configuration and data, the model and optimizer state, the
/// objective, and this process's place in the group.
struct Run<'a> {
    config: &'a Config,
    dataset: &'a Dataset,
    group: Option<&'a Arc<ProcessGroup>>,
    rank: usize,
    world: usize,
    device: Device,
    run_dir: PathBuf,
    crop: Arc<MultiCrop>,
    state: State,
    objective: LeJepaObjective,
    schedule: Schedule,
    /// The parameters whose gradients are averaged over the processes, in the same order on every rank.
    averaged_params: Vec<Tensor>,
    /// Memory a training step was estimated to take, before training (CPU).
    estimated_step_bytes: Option<u64>,
}

/// Runs a pretraining run in `run_dir` (an existing, empty folder), or with `resume` continues the
/// one there from its checkpoint, and returns its summary. With a process group this process is
/// one rank of a data-parallel run: it trains on its shard of every global batch, and only rank 0
/// reads and writes the run directory.
pub fn pretrain(config: &Config, run_dir: &Path, resume: bool, dataset: &Dataset, group: Option<&Arc<ProcessGroup>>) -> Result<Summary> {
    let started = Instant::now();
    stop_on_ctrl_c();
    let mut run = Run::set_up(config, run_dir, dataset, group)?;
    let mut step = if resume && run.leader() { run.restore()? } else { 0 };
    if let Some(group) = group {
        // Same start everywhere (as DDP): rank 0's fresh weights, or its checkpoint.
        step = run.state.broadcast_from_rank0(group, step)?;
    }
    let (mut metrics, mut first_loss) = run.open_metrics(step)?;
    let loader = run.loader(step)?;
    // The online probe's evaluation images: a fixed stratified subset, so every class counts even
    // where the test split is sorted by class.
    let eval_split = stratified_subset(&dataset.test, config.eval_images.unwrap_or(usize::MAX));
    let progress = run.progress_bar(step);
    let (mut last_terms, mut probe_accuracy, mut interrupted) = (None, None, false);
    let (mut total_wait, mut total_step_time, mut warmup_times) = (0.0, 0.0, Vec::new());

    while step < run.schedule.last {
        let step_started = Instant::now();
        let outcome = run.train_step(&loader, step)?;
        step += 1;
        let step_seconds = step_started.elapsed().as_secs_f64();
        first_loss.get_or_insert(outcome.loss);
        last_terms = Some((outcome.loss, outcome.invariance, outcome.sigreg));
        (total_wait, total_step_time) = (total_wait + outcome.data_wait_seconds, total_step_time + step_seconds);
        let images_per_second = (config.batch_size * config.grad_accum) as f64 / step_seconds;
        let record = StepRecord {
            step, epoch: run.schedule.epoch_of(step - 1), loss: outcome.loss, invariance: outcome.invariance, sigreg: outcome.sigreg,
            lr: outcome.lr, images_per_second, data_wait_seconds: outcome.data_wait_seconds, step_seconds,
        };
        writeln!(metrics, "{}", serde_json::to_string(&record)?)?;
        progress.set_message(format!(
            "loss {:.4} inv {:.4} sigreg {:.3} lr {:.2e} {images_per_second:.0} img/s", outcome.loss, outcome.invariance, outcome.sigreg, outcome.lr
        ));
        progress.set_position(step);
        // Time estimate from this process's second and third steps (the first also warms up kernels and memory).
        if warmup_times.len() < 3 {
            warmup_times.push(step_seconds);
            if run.leader() && warmup_times.len() == 3 {
                progress.suspend(|| eprintln!("{}", run.schedule.time_estimate(step, (warmup_times[1] + warmup_times[2]) / 2.0)));
            }
        }
        if step % run.schedule.steps_per_epoch == 0 || step == run.schedule.last {
            if let Some(accuracy) = run.evaluate_online_probe(step, outcome.loss, &eval_split, &mut metrics, &progress)? {
                probe_accuracy = Some(accuracy);
            }
        }
        interrupted = run.interrupted_anywhere()?;
        if run.leader() && (step % config.checkpoint_every == 0 || step == run.schedule.last || interrupted) {
            run.save_checkpoint(step)?;
        }
        if interrupted {
            break;
        }
    }
    progress.finish_and_clear();
    if run.leader() && !run.checkpoint_path().exists() {
        run.save_checkpoint(step)?;
    }
    let summary = Summary {
        run_dir: run.run_dir.clone(),
        steps: step,
        first_loss,
        final_loss: last_terms.map(|t| t.0),
        final_invariance: last_terms.map(|t| t.1),
        final_sigreg: last_terms.map(|t| t.2),
        lambda: config.lambda,
        probe_accuracy,
        checkpoint: run.checkpoint_path(),
        interrupted,
        wall_seconds: started.elapsed().as_secs_f64(),
        data_wait_fraction: if total_step_time > 0.0 { total_wait / total_step_time } else { 0.0 },
        estimated_step_bytes: run.estimated_step_bytes,
        peak_resident_bytes: memory::peak_resident_bytes(),
        unreadable_files: dataset.unreadable(),
    };
    run.finish(&summary)?;
    Ok(summary)
}

impl<'a> Run<'a> {
    /// One LeJEPA step, MINIMAL.md's loop body: views → encoder → projector → objective → backward →
    /// AdamW (the gradients summed over `grad_accum` micro-batches and averaged over the processes),
    /// with the online probe trained beside it on the detached global-view features.
    fn train_step(&mut self, loader: &Loader, step: u64) -> Result<StepOutcome> {
        let (config, device, accum) = (self.config, self.device, self.config.grad_accum as f64);
        // Drop-path masks are drawn from libtorch's generator: seed it per step so a resumed run
        // draws what an uninterrupted one would (and per rank, so shards draw independent masks).
        tch::manual_seed((config.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((self.rank as u64) << 48)) as i64);
        let lr = self.schedule.learning_rate(step);
        self.state.zero_grad();
        let (mut sums, mut data_wait_seconds) = ([0.0; 3], 0.0);
        for _ in 0..config.grad_accum {
            let waited = Instant::now();
            let batch = loader.next();
            data_wait_seconds += waited.elapsed().as_secs_f64();
            let (global, local) = (batch.global.to_device(device), batch.local.as_ref().map(|l| l.to_device(device)));
            let targets = self.probe_targets(batch.labels.as_ref()); // copied before the step is queued on a GPU
            let views = Views { global: &global, local: local.as_ref(), global_views: self.crop.global_views };
            let options = ForwardOptions { step, bf16: config.precision == Precision::Bf16, train: true, group: self.group.map(|g| &**g) };
            let (terms, features) = lejepa_forward(&self.state.encoder, &self.objective, &views, options)?;
            (&terms.loss / accum).f_backward().map_err(|e| anyhow::anyhow!("step {step}: backward failed: {e}"))?;
            self.probe_backward(&features, targets.as_ref(), accum);
            let values = self.global_values(&terms, step)?;
            sums.iter_mut().zip(values).for_each(|(sum, value)| *sum += value);
        }
        if let Some(group) = self.group {
            group.average_gradients(&self.averaged_params)?;
        }
        self.ensure_finite_gradients(step, sums[0] / accum)?;
        self.state.optimizer.step(lr);
        if let Some((_, _, optimizer)) = &mut self.state.probe {
            optimizer.step(config.probe_lr);
        }
        let [loss, invariance, sigreg] = sums.map(|sum| sum / accum);
        Ok(StepOutcome { loss, invariance, sigreg, lr, data_wait_seconds })
    }

    /// Records the run (config, versions, the exact views), builds model, objective and optimizers, and
    /// checks that a step fits in memory.
    fn set_up(config: &'a Config, run_dir: &Path, dataset: &'a Dataset, group: Option<&'a Arc<ProcessGroup>>) -> Result<Run<'a>> {
        let (rank, world) = group.map_or((0, 1), |g| (g.rank, g.world));
        if let Some(threads) = config.threads {
            tch::set_num_threads(threads as i32);
        }
        let device: Device = config.device.into();
        ensure!(device == Device::Cpu || tch::Cuda::is_available(), "--device {}: CUDA is not available on this machine", config.device);
        let crop = Arc::new(config.multicrop(dataset)?);
        if rank == 0 {
            std::fs::write(run_dir.join("config.toml"), toml::to_string(config)?)?;
            let meta = serde_json::json!({
                "lejepa_version": env!("CARGO_PKG_VERSION"), "git_commit": env!("LEJEPA_GIT_COMMIT"),
                "libtorch_version": env!("LIBTORCH_VERSION"), "device": config.device, "processes": world,
            });
            std::fs::write(run_dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
            std::fs::write(run_dir.join("augment.toml"), toml::to_string(&*crop)?)?; // the exact views, for the record and for evaluation
        }

        let arch = Arch::from_name(&config.arch)?;
        tch::manual_seed(config.seed as i64);
        let mut encoder = Encoder::with_embedding(
            device, arch, dataset.channels as i64, crop.global.size as i64, config.drop_path, config.embedding_dim, &config.projector,
        )?;
        let f64_model = config.precision == Precision::F64;
        if f64_model {
            encoder.vs.double();
        }
        let optimizer = AdamW::new(trainable(&encoder.vs), config.weight_decay);
        let labeled = dataset.train.labels.is_some() && !dataset.classes.is_empty();
        let probe = (config.online_probe && labeled).then(|| {
            let mut vs = nn::VarStore::new(Device::Cpu); // initialised on the CPU, as the encoder
            let probe = LinearProbe::new(&vs.root(), OnlineProbeInput::of(&encoder).dim(), dataset.classes.len() as i64);
            vs.set_device(device);
            if f64_model {
                vs.double();
            }
            let optimizer = AdamW::new(trainable(&vs), config.probe_weight_decay);
            (vs, probe, optimizer)
        });
        let sigreg = SigReg {
            test: NormalityTest::from_name("epps-pulley", config.t_max, config.knots)?,
            slices: config.slices,
            seed: config.seed,
            reduction: Reduction::Mean,
        };
        let mut run = Run {
            config,
            dataset,
            group,
            rank,
            world,
            device,
            run_dir: run_dir.to_path_buf(),
            crop,
            state: State { encoder, optimizer, probe },
            objective: LeJepaObjective::new(config.lambda, sigreg)?,
            schedule: Schedule::of(config, dataset.train.len(), world)?,
            averaged_params: Vec::new(),
            estimated_step_bytes: None,
        };
        if device == Device::Cpu {
            run.estimate_memory()?;
        }
        if let Some(group) = group {
            if config.sync_batch_norm {
                run.state.encoder.sync_batch_norm(group);
            }
            run.averaged_params = run.state.trainable_tensors();
        }
        Ok(run)
    }

    /// Will it fit? One forward/backward at 4 and 8 samples of the real views, extrapolated (CPU).
    fn estimate_memory(&mut self) -> Result<()> {
        let (config, crop, device) = (self.config, &self.crop, self.device);
        let (c, sg, sl) = (self.dataset.channels as i64, crop.global.size as i64, crop.local.size as i64);
        let vl = crop.local_views as i64;
        self.estimated_step_bytes = memory::estimate_step_bytes(config.batch_size, |n| {
            let n = n as i64;
            let global = Tensor::zeros([crop.global_views as i64 * n, c, sg, sg], (Kind::Float, device));
            let local = (vl > 0).then(|| Tensor::zeros([vl * n, c, sl, sl], (Kind::Float, device)));
            let views = Views { global: &global, local: local.as_ref(), global_views: crop.global_views };
            let options = ForwardOptions { step: 0, bf16: config.precision == Precision::Bf16, train: false, group: None };
            if let Ok((terms, _)) = lejepa_forward(&self.state.encoder, &self.objective, &views, options) {
                terms.loss.backward();
            }
        });
        if let Some(bytes) = self.estimated_step_bytes {
            eprintln!("estimated memory of a training step: {:.2} GB", bytes as f64 / 1e9);
            memory::ensure_fits(bytes, &format!("{} at batch size {}", config.arch, config.batch_size))?;
        }
        Ok(())
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.run_dir.join("checkpoint.safetensors")
    }

    /// Rank 0 writes the run's files and prints; every rank trains.
    fn leader(&self) -> bool {
        self.rank == 0
    }

    /// Restores the run's checkpoint (rank 0); returns the step to continue from.
    fn restore(&mut self) -> Result<u64> {
        let leftover = self.run_dir.join("checkpoint.safetensors.tmp");
        if leftover.exists() {
            // A write interrupted by a kill: the checkpoint beside it is the last complete one.
            std::fs::remove_file(&leftover).with_context(|| format!("removing {}", leftover.display()))?;
            eprintln!("removed {}, left by a checkpoint write that was interrupted", leftover.display());
        }
        let (path, shown, last) = (self.checkpoint_path(), self.run_dir.display(), self.schedule.last);
        ensure!(path.exists(), "--resume {shown}: no checkpoint.safetensors there (the run saved none yet?)");
        let step = self.state.load(&path)?;
        if step >= last {
            eprintln!("{shown}: the run finished at step {step} of {last}; to train it longer, resume with a larger --steps (--epochs for a run counted in epochs)");
        } else {
            eprintln!("resuming {shown} at step {step} of {last}");
        }
        Ok(step)
    }

    /// The metrics log, opened for appending (rank 0; elsewhere a sink), and the run's first loss. Records
    /// after `step` (logged by a run killed after its checkpoint) are dropped: those steps are redone.
    fn open_metrics(&self, step: u64) -> Result<(Box<dyn Write>, Option<f64>)> {
        if !self.leader() {
            return Ok((Box::new(std::io::sink()), None));
        }
        let path = self.run_dir.join("metrics.jsonl");
        let kept: String = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|r| r["step"].as_u64()).is_some_and(|s| s <= step))
            .map(|line| format!("{line}\n"))
            .collect();
        let first_loss = kept.lines().find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()?["loss"].as_f64());
        std::fs::write(&path, kept)?;
        Ok((Box::new(std::fs::OpenOptions::new().append(true).create(true).open(&path)?), first_loss))
    }

    /// This process's batches from `step` on.
    fn loader(&self, step: u64) -> Result<Loader> {
        let steps_per_epoch = self.schedule.steps_per_epoch;
        Loader::new(
            self.dataset.train.clone(), // an Arc: no copy of the images
            self.crop.clone(),
            LoaderConfig {
                batch_size: self.config.batch_size,
                shard: (self.rank, self.world),
                batches_per_epoch: steps_per_epoch as usize * self.config.grad_accum,
                seed: self.config.seed,
                start: (self.schedule.epoch_of(step), (step % steps_per_epoch) as usize * self.config.grad_accum),
                workers: self.config.workers,
                prefetch: 2,
            },
        )
    }

    fn progress_bar(&self, step: u64) -> indicatif::ProgressBar {
        let bar = if self.leader() { indicatif::ProgressBar::new(self.schedule.last) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap());
        bar.with_position(step)
    }

    /// The online probe's targets on the device, one per global view (none without the probe).
    fn probe_targets(&self, labels: Option<&Tensor>) -> Option<Tensor> {
        let views = self.crop.global_views as i64;
        labels.filter(|_| self.state.probe.is_some()).map(|l| l.to_device(self.device).repeat([views]))
    }

    /// The online probe's gradient, on detached global-view features: it learns to read the encoder
    /// without teaching it anything.
    fn probe_backward(&self, features: &Tensor, targets: Option<&Tensor>, accum: f64) {
        if let (Some((_, probe, _)), Some(targets)) = (&self.state.probe, targets) {
            let kind = if self.config.precision == Precision::F64 { Kind::Double } else { Kind::Float };
            let logits = probe.forward(&features.detach().to_kind(kind));
            (logits.cross_entropy_for_logits(targets) / accum).backward();
        }
    }

    /// The loss terms of the global batch (the mean of the shards'), read only after the backward pass
    /// is queued (on a GPU a read waits for queued work); a non-finite one stops the run before AdamW.
    fn global_values(&self, terms: &crate::objective::LossTerms, step: u64) -> Result<[f64; 3]> {
        let mut values = [terms.loss.double_value(&[]), terms.invariance.double_value(&[]), terms.sigreg.double_value(&[])];
        if let Some(group) = self.group {
            let reduced = Tensor::from_slice(&values);
            group.sum_in_place(&[&reduced])?;
            values = <[f64; 3]>::try_from(Vec::<f64>::try_from(reduced / self.world as f64)?).unwrap();
        }
        if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
            let term = ["loss", "invariance", "SIGReg"][bad];
            bail!(
                "step {step}: the {term} is not finite (loss {}, invariance {}, SIGReg {}); stopped without saving. \
                 The last good checkpoint ({}) is intact; try a lower --lr",
                values[0], values[1], values[2], self.checkpoint_path().display()
            );
        }
        Ok(values)
    }

    /// A finite loss can still give a non-finite gradient (an overflow, a bad weight): it never reaches the weights.
    fn ensure_finite_gradients(&self, step: u64, loss: f64) -> Result<()> {
        let stores = [Some(("", &self.state.encoder.vs)), self.state.probe.as_ref().map(|(vs, _, _)| ("probe.", vs))];
        if let Some(name) = non_finite_gradient(stores.into_iter().flatten()) {
            bail!(
                "step {step}: the gradient of {name} is not finite (the loss was {loss:.4}); stopped without saving. \
                 The last good checkpoint ({}) is intact; try a lower --lr",
                self.checkpoint_path().display()
            );
        }
        Ok(())
    }

    /// The online probe's accuracy at the end of an epoch, logged and printed. Every rank evaluates (the
    /// same weights, the same images), so none waits in a collective while rank 0 alone works through them.
    fn evaluate_online_probe(
        &self, step: u64, loss: f64, eval: &Split, metrics: &mut dyn Write, progress: &indicatif::ProgressBar,
    ) -> Result<Option<f64>> {
        let Some((_, probe, _)) = &self.state.probe else { return Ok(None) };
        let epoch = self.schedule.epoch_of(step - 1);
        match probe_accuracy(&self.state.encoder, probe, eval, &self.crop, self.device) {
            Ok(Some(accuracy)) => {
                writeln!(metrics, "{}", serde_json::json!({"step": step, "epoch": epoch, "probe_accuracy": accuracy}))?;
                if self.leader() {
                    progress.suspend(|| eprintln!("epoch {epoch} step {step}: loss {loss:.4}, online probe accuracy {:.2}%", 100.0 * accuracy));
                }
                Ok(Some(accuracy))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                progress.suspend(|| eprintln!("warning: no online probe accuracy at step {step}: {e:#}"));
                Ok(None)
            }
        }
    }

    /// Whether Ctrl-C reached this process or, in a group, any process (all then stop together).
    fn interrupted_anywhere(&self) -> Result<bool> {
        let interrupted = STOP.load(Ordering::SeqCst);
        let Some(group) = self.group else { return Ok(interrupted) };
        let flag = Tensor::from(interrupted as i64);
        group.sum_in_place(&[&flag])?;
        Ok(flag.int64_value(&[]) > 0)
    }

    fn save_checkpoint(&self, step: u64) -> Result<()> {
        self.state.save(&self.run_dir, step)?;
        if self.config.keep_backbones {
            std::fs::copy(self.run_dir.join("backbone.safetensors"), self.run_dir.join(format!("backbone-step{step}.safetensors")))?;
        }
        Ok(())
    }

    /// Writes the summary and the plots (rank 0), then waits for every process: all leave once rank 0's
    /// last checkpoint is on disk.
    fn finish(&self, summary: &Summary) -> Result<()> {
        if self.leader() {
            std::fs::write(self.run_dir.join("summary.json"), serde_json::to_string_pretty(summary)?)?;
            if let Err(e) = plots::draw(&self.run_dir.join("metrics.jsonl"), &self.run_dir) {
                eprintln!("warning: no plots drawn: {e:#}");
            }
        }
        if let Some(group) = self.group {
            group.barrier()?;
        }
        Ok(())
    }
}

/// What the online probe reads, decided here only: the embedding layer's output where there is one (as
/// MINIMAL.md's probe), else the backbone's probe features; each with its width.
enum OnlineProbeInput {
    Embedding(i64),
    BackboneProbe(i64),
}

impl OnlineProbeInput {
    fn of(encoder: &Encoder) -> OnlineProbeInput {
        match encoder.projector.embedding_dim() {
            Some(dim) => OnlineProbeInput::Embedding(dim),
            None => OnlineProbeInput::BackboneProbe(encoder.backbone.probe_dim()),
        }
    }

    fn dim(&self) -> i64 {
        match *self {
            OnlineProbeInput::Embedding(dim) | OnlineProbeInput::BackboneProbe(dim) => dim,
        }
    }
}

/// Accuracy of the online probe on the evaluation images, encoder in eval mode.
fn probe_accuracy(encoder: &Encoder, probe: &LinearProbe, eval: &Split, crop: &MultiCrop, device: Device) -> Result<Option<f64>> {
    use crate::eval::FeatureKind;
    let Some(labels) = eval.labels.as_ref().filter(|l| !l.is_empty()) else { return Ok(None) };
    let features = match OnlineProbeInput::of(encoder) {
        OnlineProbeInput::Embedding(_) => {
            let pooled = crate::eval::features(&encoder.backbone, eval, crop, FeatureKind::Embedding, device)?;
            tch::no_grad(|| encoder.projector.embed(&pooled.to_device(device).to_kind(probe.kind())))
        }
        OnlineProbeInput::BackboneProbe(_) => crate::eval::features(&encoder.backbone, eval, crop, FeatureKind::Probe, device)?
            .to_device(device)
            .to_kind(probe.kind()),
    };
    let predicted = tch::no_grad(|| probe.forward(&features).argmax(-1, false).to_device(Device::Cpu));
    let correct = predicted.eq_tensor(&Tensor::from_slice(labels)).sum(Kind::Int64).int64_value(&[]);
    Ok(Some(correct as f64 / labels.len() as f64))
}

/// Ctrl-C asks the loop to save a checkpoint and stop after the current step; a second one quits at once.
fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)");
    });
    STOP.store(false, Ordering::SeqCst);
}
