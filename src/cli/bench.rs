//! `lejepa bench`: lejepa against the PyTorch reference (benches/reference/lejepa_step.py) on the
//! same shapes and threads, in one invocation, with ratios; plus the machine's GEMM peak, so each
//! step's FLOPs (counted by PyTorch's FlopCounterMode on the reference, and on the reference with
//! lejepa's class-token-only last ViT block for ours) become a fraction of peak.

use std::ffi::{CString, c_char};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::data::augment::MultiCrop;
use crate::data::loader::{Loader, LoaderConfig};
use crate::ffi::take_string;
use crate::models::{Arch, Encoder};
use crate::objective::LeJepaObjective;
use crate::optim::{AdamW, trainable};
use crate::sigreg::SigReg;
use crate::train::config::Config;
use crate::train::{ForwardOptions, Views, lejepa_forward};
use crate::train::memory::{cuda_empty_cache, cuda_peak_growth, measure_live_memory, minor_page_faults, peak_growth, run_fast};

#[derive(clap::Args)]
pub struct Args {
    /// Workloads, comma-separated: gemm, model, pipeline, pipeline-elpv (skipped where ELPV is not
    /// installed: scripts/setup --elpv), sigreg, views, views-jpeg (the paper's 224/96 px views of
    /// generated 1-megapixel JPEG files, decoded every time on both sides), paper (the model step of
    /// the paper's recipe: --paper-archs on 3 × 224 px images, not in the default list).
    #[arg(long, value_delimiter = ',', default_value = "gemm,model,pipeline,pipeline-elpv,sigreg,views,views-jpeg")]
    workloads: Vec<String>,
    /// Timed repetitions per row (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Steps per timed repetition.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Model-step and pipeline rows: alternating rounds of (lejepa, reference); a model round is
    /// --reps repetitions of --steps steps, a pipeline round one run of --reps × --steps steps.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Intra-op threads for both sides.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Data-loading workers of both sides in the pipeline and view rows.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Images per step of the model, pipeline and view rows (before multi-crop: 2 global 28 px + 4 local 12 px views each).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Architectures of the model-step rows: vit-tiny-patch4-depth6, resnet18-small, resnet18-small-stride2
    /// (the reference builds the same networks).
    #[arg(long, value_delimiter = ',', default_value = "vit-tiny-patch4-depth6,resnet18-small")]
    model_archs: Vec<String>,
    /// Paper rows: architectures, each with the paper preset's head (512-d embedding, projector
    /// 2048-2048-64), 1024 SIGReg directions, drop path 0.1 and views (2 × 224 px + 6 × 96 px).
    #[arg(long, value_delimiter = ',', default_value = "vit-small-patch16,resnet50")]
    paper_archs: Vec<String>,
    /// Paper rows: images per step (default: the paper's 256 on CUDA, 8 on the CPU, where a step of 8 takes seconds).
    #[arg(long)]
    paper_batch_size: Option<usize>,
    /// Paper rows: the reference runs eager (what the official code runs), compiled (torch.compile
    /// of backbone and projector, what a performance-minded user tries first), or both, each its row.
    #[arg(long, value_delimiter = ',', default_value = "eager,compile", value_parser = ["eager", "compile"])]
    paper_reference: Vec<String>,
    /// Precisions of the model-step, paper and pipeline rows.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    precisions: Vec<String>,
    /// cpu, or cuda / cuda:N for the model, paper, pipeline, SIGReg and GEMM rows (the reference runs on the same device).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Python with torch, timm and torchvision (scripts/setup --python).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// The reference's allocator settings: glibc (its steady state, what any PyTorch program runs
    /// with) or lejepa (ours: heap only, never trimmed), to tell the allocator's share of a ratio.
    #[arg(long, default_value = "glibc", value_parser = ["glibc", "lejepa"])]
    reference_malloc: String,
    /// The reference's MKL kernels: MKL's own choice (what any PyTorch program gets) or lejepa's
    /// (on a non-Intel CPU MKL's Intel kernels, src/mkl_dispatch.rs), to tell that choice's share of a ratio.
    #[arg(long, default_value = "own", value_parser = ["own", "lejepa"])]
    reference_mkl: String,
    /// Model rows: after the timed steps, record one more step of each side with PyTorch's operator
    /// profiler into DIR/<arch>-<precision>-{lejepa,reference}.json (Chrome traces; compare them
    /// with benches/reference/compare_profiles.py).
    #[arg(long, value_name = "DIR")]
    profile: Option<PathBuf>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

unsafe extern "C" {
    fn lejepa_profiler_start(error: *mut *mut c_char) -> bool;
    fn lejepa_profiler_stop(path: *const c_char, error: *mut *mut c_char) -> bool;
}

/// Runs `work` under PyTorch's operator profiler (src/shim/profiler.cpp) and saves the trace to `path`.
fn profiled(path: &Path, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let mut error = std::ptr::null_mut();
    // SAFETY: the shim writes a malloc'd message to `error` only when it returns false.
    ensure!(unsafe { lejepa_profiler_start(&mut error) }, "starting the profiler: {}", take_string(error));
    let result = work();
    let c_path = CString::new(path.to_string_lossy().as_bytes())?;
    ensure!(unsafe { lejepa_profiler_stop(c_path.as_ptr(), &mut error) }, "saving the profile {}: {}", path.display(), take_string(error));
    result
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
}

fn spread(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Runs the reference script and parses its JSON line.
fn reference(args: &Args, mode: &str, extra: &[String]) -> Result<Value> {
    if args.device.starts_with("cuda") {
        cuda_empty_cache(); // our cached blocks would otherwise be missing from the reference's GPU memory
    }
    // From the repository the binary runs in (a copy on another machine, a GPU one say), else where it was built.
    let relative = PathBuf::from("benches/reference/lejepa_step.py");
    let script = if relative.exists() { relative } else { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative) };
    let mut command = Command::new(&args.python);
    command
        .arg(&script)
        .arg(mode)
        .args(["--threads", &args.threads.to_string(), "--reps", &args.reps.to_string(), "--steps", &args.steps.to_string()])
        .args(["--batch", &args.batch_size.to_string(), "--workers", &args.workers.to_string(), "--device", &args.device])
        .args(["--malloc", &args.reference_malloc])
        .args(extra);
    if args.reference_mkl == "lejepa" {
        command.env("LD_PRELOAD", env!("LEJEPA_MKL_DISPATCH_PRELOAD"));
    }
    let out = command
        .output()
        .with_context(|| format!("running {} (scripts/setup --python installs its packages)", args.python.display()))?;
    ensure!(out.status.success(), "reference {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(stdout.lines().last().context("reference printed nothing")?)?)
}

/// The last non-empty line of a message (a Python traceback's verdict).
fn last_line(message: &str) -> &str {
    message.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(message).trim()
}

/// Peak memory of `work`, measured with the allocator returning freed buffers (both sides do the
/// same around their measurement, and run the timed steps with the allocator of a training run).
/// On CUDA: the caching allocator's peak above what was allocated before (the reference likewise).
/// Either way the host allocator is left with the running settings (the warm-up steps before may
/// have run under the measuring ones).
fn measured(device: Device, work: impl FnOnce()) -> Option<u64> {
    let bytes = match device {
        Device::Cuda(index) => cuda_peak_growth(index, work),
        _ => {
            measure_live_memory();
            peak_growth(work)
        }
    };
    run_fast();
    bytes
}

/// Waits for the device's queued kernels (CUDA runs asynchronously), so timings are real.
fn sync(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// FLOP/s of a square matmul, best of 3: 3072³ on the CPU (smaller where that would take over about 2 s), 8192³ on
/// CUDA, where 3072³ is too small to fill the GPU.
fn gemm_peak(kind: Kind, device: Device) -> f64 {
    let square = |n: i64| (Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind), Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind));
    let rate = |n: i64, a: &Tensor, b: &Tensor| {
        let t = Instant::now();
        let _ = a.matmul(b);
        sync(device);
        2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64()
    };
    let mut n = if device == Device::Cpu { 3072 } else { 8192 };
    if device == Device::Cpu {
        // A CPU that emulates bf16 (no bf16 units: well under 1 GFLOP/s) would take minutes per 3072³
        // product: there a smaller one, of at most about 2 s, gives the peak.
        let (a, b) = square(512);
        let probe = (0..2).map(|_| rate(512, &a, &b)).fold(0.0, f64::max);
        while n > 512 && 2.0 * (n as f64).powi(3) / probe > 2.0 {
            n /= 2;
        }
    }
    let (a, b) = square(n);
    let _ = a.matmul(&b);
    sync(device);
    (0..3).map(|_| rate(n, &a, &b)).fold(0.0, f64::max)
}

/// "f32 X GFLOP/s[, bf16 Y GFLOP/s]" (the f32 peak is always measured, the bf16 one only for bf16 rows).
fn describe_peaks(f32: Option<f64>, bf16: Option<f64>) -> String {
    let bf16 = bf16.map(|peak| format!(", bf16 {:.1} GFLOP/s", peak / 1e9)).unwrap_or_default();
    format!("f32 {:.1} GFLOP/s{bf16}", f32.unwrap() / 1e9)
}

struct Row {
    name: String,
    unit: &'static str,
    ours: Vec<f64>,
    theirs: Option<Vec<f64>>,
    ours_bytes: Option<u64>,
    theirs_bytes: Option<u64>,
    /// (ours, reference) fraction of the GEMM peak.
    peak_fraction: Option<(f64, f64)>,
    /// (ours, reference) FLOPs of one step, model rows.
    flops: Option<(f64, f64)>,
    note: String,
}

impl Row {
    /// ours / reference, higher is better for throughputs (images/s, views/s), inverted for seconds.
    fn ratio(&self) -> Option<f64> {
        let theirs = median(self.theirs.as_ref()?);
        let ours = median(&self.ours);
        Some(if self.unit == "s" { theirs / ours } else { ours / theirs })
    }

    fn to_json(&self) -> Value {
        json!({"workload": self.name, "unit": self.unit, "ours": self.ours, "reference": self.theirs, "ratio": self.ratio(),
               "ours_peak_bytes": self.ours_bytes, "reference_peak_bytes": self.theirs_bytes,
               "ours_peak_fraction": self.peak_fraction.map(|p| p.0), "reference_peak_fraction": self.peak_fraction.map(|p| p.1),
               "ours_flops_per_step": self.flops.map(|f| f.0), "reference_flops_per_step": self.flops.map(|f| f.1),
               "note": self.note})
    }
}

/// One model-step workload, built the same on both sides: the network with its head, SIGReg's
/// directions and one step's views (pre-made random tensors).
struct StepShape {
    /// lejepa's architecture name; the reference builds the same network in timm.
    arch: String,
    channels: i64,
    global_size: i64,
    local_size: i64,
    global_views: usize,
    local_views: usize,
    embedding_dim: Option<i64>,
    projector: Vec<i64>,
    slices: i64,
    drop_path: f64,
    batch: usize,
    /// The paper's recipe (the `paper` workload) rather than cpu-small's.
    paper: bool,
}

impl StepShape {
    /// The cpu-small preset's step: one channel, 2 × 28 px + 4 × 12 px views, projector 512-512-64.
    fn small(arch: &str, batch: usize) -> StepShape {
        StepShape {
            arch: arch.into(),
            channels: 1,
            global_size: 28,
            local_size: 12,
            global_views: 2,
            local_views: 4,
            embedding_dim: None,
            projector: vec![512, 512, 64],
            slices: 256,
            drop_path: 0.0,
            batch,
            paper: false,
        }
    }

    /// The paper preset's step (§6.1) on 224-px colour photos: its views (2 × 224 px + 6 × 96 px),
    /// 512-d embedding, projector, SIGReg directions and drop path.
    fn paper(arch: &str, batch: usize) -> Result<StepShape> {
        let paper = Config::preset("paper")?;
        Ok(StepShape {
            arch: arch.into(),
            channels: 3,
            global_size: 224,
            local_size: 96,
            global_views: paper.global_views,
            local_views: paper.local_views,
            embedding_dim: paper.embedding_dim,
            projector: paper.projector,
            slices: paper.slices,
            drop_path: paper.drop_path,
            batch,
            paper: true,
        })
    }

    /// The same network and views as arguments of the reference's `model` mode.
    fn reference_args(&self) -> Vec<String> {
        let projector = self.projector.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        [
            ("--arch", self.arch.clone()),
            ("--in-chans", self.channels.to_string()),
            ("--global-size", self.global_size.to_string()),
            ("--local-size", self.local_size.to_string()),
            ("--global-views", self.global_views.to_string()),
            ("--local-views", self.local_views.to_string()),
            ("--embedding-dim", self.embedding_dim.unwrap_or(0).to_string()),
            ("--projector", projector),
            ("--slices", self.slices.to_string()),
            ("--drop-path", self.drop_path.to_string()),
            ("--batch", self.batch.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }

    /// The --profile trace of one side: `<arch>-<precision>-<side>.json`, `paper-…` for the paper rows.
    fn profile_name(&self, precision: &str, side: &str) -> String {
        format!("{}{}-{precision}-{side}.json", if self.paper { "paper-" } else { "" }, self.arch)
    }

    /// "2×224 + 6×96 px, batch 8"
    fn describe(&self) -> String {
        format!("{}×{} + {}×{} px, batch {}", self.global_views, self.global_size, self.local_views, self.local_size, self.batch)
    }
}

/// One shape's step on pre-made tensors: (images/s per repetition, peak bytes of one step, minor
/// page faults per timed step). The memory is measured, and with --profile one more step
/// recorded, only in the first round of a row.
fn our_model_step(args: &Args, shape: &StepShape, bf16: bool, device: Device, first_round: bool) -> Result<(Vec<f64>, Option<u64>, f64)> {
    tch::manual_seed(0);
    let n = shape.batch as i64;
    let arch = Arch::from_name(&shape.arch)?;
    let encoder = Encoder::with_embedding(device, arch, shape.channels, shape.global_size, shape.drop_path, shape.embedding_dim, &shape.projector)?;
    let objective = LeJepaObjective::new(0.05, SigReg { slices: shape.slices, ..SigReg::default() })?;
    let mut optimizer = AdamW::new(trainable(&encoder.vs), 0.05);
    let (c, g, l) = (shape.channels, shape.global_size, shape.local_size);
    let global = Tensor::randn([shape.global_views as i64 * n, c, g, g], (Kind::Float, device));
    let local = (shape.local_views > 0).then(|| Tensor::randn([shape.local_views as i64 * n, c, l, l], (Kind::Float, device)));
    let mut step = |i: u64| -> Result<()> {
        optimizer.zero_grad();
        let views = Views { global: &global, local: local.as_ref(), global_views: shape.global_views };
        lejepa_forward(&encoder, &objective, &views, ForwardOptions { step: i, bf16, train: true, group: None })?.0.loss.backward();
        optimizer.step(1e-3);
        sync(device);
        Ok(())
    };
    if first_round {
        // The warm-up steps too: under the running settings they would leave a heap of free
        // chunks that the measured step reuses and never gives back, counting freed memory as live.
        measure_live_memory();
    }
    step(0)?;
    step(1)?;
    let mut bytes = None;
    if first_round {
        let mut result = Ok(());
        bytes = measured(device, || result = step(2));
        result?;
    }
    step(3)?; // settles the running allocator settings before timing
    let mut rates = Vec::new();
    let faults_before = minor_page_faults();
    for r in 0..args.reps {
        let t = Instant::now();
        for i in 0..args.steps {
            step((4 + r * args.steps + i) as u64)?;
        }
        rates.push(shape.batch as f64 * args.steps as f64 / t.elapsed().as_secs_f64());
    }
    let faults_per_step = (minor_page_faults() - faults_before) as f64 / (args.reps * args.steps) as f64;
    if let (Some(dir), true) = (&args.profile, first_round) {
        let precision = if bf16 { "bf16" } else { "f32" };
        profiled(&dir.join(shape.profile_name(precision, "lejepa")), || step((4 + args.reps * args.steps) as u64))?;
    }
    Ok((rates, bytes, faults_per_step))
}

/// The cpu-small views (2 × 28 px + 4 × 12 px) of a built-in dataset's training images, as
/// training loads them (`fashion-mnist`; `elpv`: 300×300 PNG files, all decoded here).
fn view_loader(args: &Args, data: &str) -> Result<Loader> {
    let dataset = crate::data::open(data, &Default::default())?;
    let mut crop = MultiCrop::lejepa(28, 4, 2, 4);
    (crop.mean, crop.std) = crate::data::channel_stats(&dataset.train, 1)?;
    let batches_per_epoch = dataset.train.len() / args.batch_size;
    let config = LoaderConfig { batch_size: args.batch_size, shard: (0, 1), batches_per_epoch, seed: 0, start: (0, 0), workers: args.workers, prefetch: 2 };
    Loader::new(dataset.train, Arc::new(crop), config)
}

/// What a whole-pipeline run measured, on either side.
struct Pipeline {
    /// Images per second after the first step (start-up excluded).
    steady: f64,
    /// Images per second from opening the data to the last step, start-up included.
    end_to_end: f64,
    /// Fraction of the steady time spent waiting for data.
    wait: f64,
}

/// The whole pipeline on a built-in dataset: loader workers + training steps.
fn our_pipeline(args: &Args, data: &str, steps: usize, bf16: bool, device: Device) -> Result<Pipeline> {
    tch::manual_seed(0);
    let encoder = Encoder::new(device, Arch::from_name("vit-tiny-patch4-depth6")?, 1, 28, 0.0, &[512, 512, 64])?;
    let objective = LeJepaObjective::new(0.05, SigReg { slices: 256, ..SigReg::default() })?;
    let mut optimizer = AdamW::new(trainable(&encoder.vs), 0.05);
    let opened = Instant::now();
    let loader = view_loader(args, data)?;
    let (mut started, mut wait) = (Instant::now(), 0.0);
    for i in 0..=steps {
        if i == 1 {
            (started, wait) = (Instant::now(), 0.0);
        }
        let w = Instant::now();
        let batch = loader.next();
        wait += w.elapsed().as_secs_f64();
        optimizer.zero_grad();
        let local = batch.local.as_ref().map(|l| l.to_device(device));
        let global = batch.global.to_device(device);
        let views = Views { global: &global, local: local.as_ref(), global_views: 2 };
        lejepa_forward(&encoder, &objective, &views, ForwardOptions { step: i as u64, bf16, train: true, group: None })?.0.loss.backward();
        optimizer.step(1e-3);
    }
    sync(device);
    let elapsed = started.elapsed().as_secs_f64();
    let images = (steps * args.batch_size) as f64;
    Ok(Pipeline { steady: images / elapsed, end_to_end: (images + args.batch_size as f64) / opened.elapsed().as_secs_f64(), wait: wait / elapsed })
}

fn their_pipeline(args: &Args, data: &str, steps: usize, precision: &str) -> Result<Pipeline> {
    let extra = ["--steps", &steps.to_string(), "--data", data, "--precision", precision].map(String::from);
    let theirs = reference(args, "pipeline", &extra)?;
    let field = |name: &str| theirs[name].as_f64().unwrap_or(f64::NAN);
    Ok(Pipeline { steady: field("images_per_second"), end_to_end: field("end_to_end_images_per_second"), wait: field("data_wait_fraction") })
}

/// Views per second of the loader alone.
fn our_views(args: &Args, batches: usize) -> Result<f64> {
    let loader = view_loader(args, "fashion-mnist")?;
    let _ = loader.next();
    let t = Instant::now();
    for _ in 0..batches {
        let _ = loader.next();
    }
    Ok((batches * args.batch_size * 6) as f64 / t.elapsed().as_secs_f64())
}

/// Photos for the views-jpeg row: 1024×1024 colour JPEGs (gradients, rings and noise, as a photo
/// compresses), written once into a folder under the system's temporary directory.
fn jpeg_folder(count: usize) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lejepa-bench-jpeg-{count}"));
    if dir.join(format!("{:04}.jpg", count - 1)).exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    use rayon::prelude::*;
    (0..count).into_par_iter().try_for_each(|i| -> Result<()> {
        let mut state = i as u32 * 2_654_435_761 + 1;
        let picture = image::RgbImage::from_fn(1024, 1024, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 24) as f32 - 12.0;
            let (u, v) = (x as f32 / 1024.0, y as f32 / 1024.0);
            let ring = (((u - 0.3).powi(2) + (v - 0.6).powi(2)).sqrt() * (12.0 + i as f32 % 20.0)).sin();
            let px = |value: f32| (value + noise).clamp(0.0, 255.0) as u8;
            image::Rgb([px(255.0 * u), px(255.0 * v), px(127.5 + 100.0 * ring)])
        });
        let path = dir.join(format!("{i:04}.jpg"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        picture.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(file, 90))?;
        Ok(())
    })?;
    Ok(dir)
}

/// Our loader on those photos: 2 × 224 px + 6 × 96 px views (the paper's recipe), no cache (every
/// image decoded each time, as the reference does), views per second over `batches` batches of 32.
fn our_jpeg_views(args: &Args, folder: &Path, batches: usize) -> Result<f64> {
    let options = crate::data::OpenOptions { cache_bytes: 0, ..Default::default() };
    let dataset = crate::data::open(&format!("folder:{}", folder.display()), &options)?;
    let mut crop = MultiCrop::lejepa(224, 1, 2, 6);
    (crop.mean, crop.std) = (vec![0.5; 3], vec![0.5; 3]);
    dataset.decode_at(crop.decode_side());
    let batches_per_epoch = dataset.train.len() / JPEG_BATCH;
    let config = LoaderConfig { batch_size: JPEG_BATCH, shard: (0, 1), batches_per_epoch, seed: 0, start: (0, 0), workers: args.workers, prefetch: 2 };
    let loader = Loader::new(dataset.train, Arc::new(crop), config)?;
    let _ = loader.next();
    let t = Instant::now();
    for _ in 0..batches {
        let _ = loader.next();
    }
    Ok((batches * JPEG_BATCH * 8) as f64 / t.elapsed().as_secs_f64())
}

const JPEG_BATCH: usize = 32;

/// The networks the reference builds in timm as lejepa builds them: for 28-px views (model rows) and
/// for the paper's 224/96-px views (paper rows).
const SMALL_ARCHS: [&str; 3] = ["vit-tiny-patch4-depth6", "resnet18-small", "resnet18-small-stride2"];
const PAPER_ARCHS: [&str; 2] = ["vit-small-patch16", "resnet50"];

/// A model-step row's FLOP rates (FLOPs of a step × steps/s, each side's), made fractions of the
/// GEMM peak once that is measured again after all model rows.
struct FlopRate {
    row: usize,
    bf16: bool,
    ours: f64,
    theirs: f64,
}

/// One reference mode's measurements in a model-step row.
#[derive(Default)]
struct TheirSide {
    rates: Vec<f64>,
    bytes: Option<u64>,
    faults: Vec<f64>,
    /// Seconds `torch.compile` took (compile mode), per round.
    compiling: Vec<f64>,
    /// Why the reference failed (out of memory, a compile error): the row keeps ours and says so.
    failed: Option<String>,
}

/// The model-step rows of `shapes`: for each shape and precision, alternating rounds of ours and
/// the reference in each of `modes` (eager, compile), one row per mode. bf16 paper rows are skipped
/// on a CPU without bf16 units, where libtorch emulates bf16 and one step would take hours.
#[allow(clippy::too_many_arguments)]
fn model_rows(
    args: &Args, label: &str, shapes: &[StepShape], modes: &[String], device: Device, bf16_units: bool, rows: &mut Vec<Row>,
    flop_rates: &mut Vec<FlopRate>,
) -> Result<()> {
    for shape in shapes {
        for precision in args.precisions.iter().map(String::as_str) {
            let bf16 = precision == "bf16";
            if bf16 && device == Device::Cpu && !bf16_units && shape.paper {
                eprintln!("{label} {} bf16: skipped (this CPU emulates bf16)", shape.arch);
                continue;
            }
            eprintln!("{label}: {} {precision}, {} …", shape.arch, shape.describe());
            // Alternating rounds: a slow spell of a noisy machine then falls on both sides.
            let (mut ours, mut ours_bytes, mut ours_faults) = (Vec::new(), None, Vec::new());
            let mut theirs: Vec<TheirSide> = modes.iter().map(|_| TheirSide::default()).collect();
            // FLOPs of one step, each side's: counted by FlopCounterMode on the reference's first step, and
            // on that step with lejepa's class-token-only last block (ViT) for ours.
            let mut counted: Option<(f64, f64)> = None;
            for round in 0..args.rounds {
                let first = round == 0;
                let (rates, bytes, faults) = our_model_step(args, shape, bf16, device, first)?;
                ours.extend(rates);
                ours_faults.push(faults);
                ours_bytes = ours_bytes.or(bytes);
                for (mode, side) in modes.iter().zip(&mut theirs) {
                    if side.failed.is_some() {
                        continue;
                    }
                    let mut extra = shape.reference_args();
                    extra.extend(["--precision".to_string(), precision.into()]);
                    if mode == "compile" {
                        extra.push("--compile".into());
                    }
                    if !first {
                        extra.push("--skip-memory".into()); // time only: no memory, no FLOP count
                    }
                    if let (Some(dir), true, "eager") = (&args.profile, first, mode.as_str()) {
                        extra.push("--profile".into());
                        extra.push(dir.join(shape.profile_name(precision, "reference")).display().to_string());
                    }
                    let result = match reference(args, "model", &extra) {
                        Ok(result) => result,
                        Err(e) => {
                            eprintln!("reference {mode} failed: {e:#}");
                            side.failed = Some(last_line(&format!("{e:#}")).to_string());
                            continue;
                        }
                    };
                    side.rates.extend(serde_json::from_value::<Vec<f64>>(result["images_per_second"].clone())?);
                    side.faults.push(result["page_faults_per_step"].as_f64().unwrap_or(f64::NAN));
                    side.bytes = side.bytes.or(result["peak_bytes"].as_u64());
                    side.compiling.extend(result["compile_seconds"].as_f64());
                    if let (None, Some(flops)) = (counted, result["flops_per_step"].as_f64()) {
                        counted = Some((result["lejepa_flops_per_step"].as_f64().unwrap_or(flops), flops));
                    }
                }
            }
            let (our_flops, flops) = counted.unwrap_or((f64::NAN, f64::NAN));
            // FLOP/s of each side's median step, set against the GEMM peak after all rows.
            let flop_rate = |flops: f64, rate: f64| flops * rate / shape.batch as f64;
            for (mode, side) in modes.iter().zip(theirs) {
                let against = if modes.len() > 1 || mode != "eager" { format!(", vs {}", if mode == "compile" { "torch.compile" } else { "eager" }) } else { String::new() };
                let views = if shape.paper { format!(", {}", shape.describe()) } else { String::new() };
                let mut note = format!("GFLOP/step ours / ref {:.1} / {:.1} (FlopCounterMode)", our_flops / 1e9, flops / 1e9);
                if let Some(why) = &side.failed {
                    note.push_str(&format!("; reference failed: {why}"));
                }
                if !side.rates.is_empty() {
                    flop_rates.push(FlopRate { row: rows.len(), bf16, ours: flop_rate(our_flops, median(&ours)), theirs: flop_rate(flops, median(&side.rates)) });
                    note.push_str(&format!("; minor page faults per timed step ours / ref: {:.0} / {:.0}", median(&ours_faults), median(&side.faults)));
                }
                if !side.compiling.is_empty() {
                    note.push_str(&format!("; compiling took {:.0} s (not timed)", median(&side.compiling)));
                }
                rows.push(Row {
                    name: format!("{label} {} {precision}{views}{against}", shape.arch),
                    unit: "img/s",
                    peak_fraction: None,
                    flops: counted.map(|_| (our_flops, flops)),
                    ours: ours.clone(),
                    theirs: (!side.rates.is_empty()).then_some(side.rates),
                    ours_bytes,
                    theirs_bytes: side.bytes,
                    note,
                });
            }
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    tch::set_num_threads(args.threads as i32);
    run_fast(); // the allocator settings of a training run (the reference's: --reference-malloc)
    let device = crate::train::parse_device(&args.device)?;
    ensure!(device == Device::Cpu || tch::Cuda::is_available(), "--device {}: CUDA is not available", args.device);
    ensure!(args.rounds >= 1 && args.reps >= 1 && args.steps >= 1, "--rounds, --reps and --steps must be at least 1");
    let wants = |w: &str| args.workloads.iter().any(|x| x == w);
    // Before any measurement: a network the reference cannot build would fail only after minutes.
    for (workload, archs, known) in [("model", &args.model_archs, &SMALL_ARCHS[..]), ("paper", &args.paper_archs, &PAPER_ARCHS[..])] {
        if let (true, Some(arch)) = (wants(workload), archs.iter().find(|arch| !known.contains(&arch.as_str()))) {
            anyhow::bail!("--{workload}-archs: the reference (benches/reference/lejepa_step.py) builds {} for these rows, not {arch}", known.join(", "));
        }
    }
    if let Some(dir) = &args.profile {
        std::fs::create_dir_all(dir).with_context(|| format!("--profile: creating {}", dir.display()))?;
    }
    // Which CPU, and whether it has bf16 units: a VM's host can change between runs, and where the hypervisor hides
    // AVX512-BF16 and AMX libtorch emulates bf16 and every bf16 row changes.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = crate::autocast::cpu_name(&cpuinfo);
    let bf16_units = crate::autocast::cpu_has_bf16_units(&cpuinfo);
    println!("CPU: {} ({} bf16 units)", cpu.as_deref().unwrap_or("unknown"), if bf16_units { "with" } else { "no" });
    let mkl = crate::mkl_dispatch::vendor_check();
    if device == Device::Cpu {
        let reference = if args.reference_mkl == "lejepa" { "the same for the reference" } else { "the reference: MKL's own choice" };
        println!("{mkl}; {reference}");
    }
    let mut rows: Vec<Row> = Vec::new();
    let (mut peak_f32, mut peak_bf16) = (None, None);
    if wants("gemm") || wants("model") || wants("paper") {
        // The bf16 peak only for bf16 rows: where the CPU emulates bf16, its 3072³ product alone takes minutes.
        peak_f32 = Some(gemm_peak(Kind::Float, device));
        peak_bf16 = args.precisions.iter().any(|p| p == "bf16").then(|| gemm_peak(Kind::BFloat16, device));
        println!("GEMM peak ({}, {} threads): {}", args.device, args.threads, describe_peaks(peak_f32, peak_bf16));
    }
    if wants("model") || wants("paper") {
        let mut flop_rates = Vec::new();
        if wants("model") {
            let shapes: Vec<StepShape> = args.model_archs.iter().map(|arch| StepShape::small(arch, args.batch_size)).collect();
            model_rows(&args, "(a) model step", &shapes, &["eager".to_string()], device, bf16_units, &mut rows, &mut flop_rates)?;
        }
        if wants("paper") {
            let batch = args.paper_batch_size.unwrap_or(if device == Device::Cpu { 8 } else { 256 });
            ensure!(batch >= 2, "--paper-batch-size {batch}: SIGReg needs at least 2 images per step");
            let shapes: Vec<StepShape> = args.paper_archs.iter().map(|arch| StepShape::paper(arch, batch)).collect::<Result<_>>()?;
            model_rows(&args, "(e) paper step", &shapes, &args.paper_reference, device, bf16_units, &mut rows, &mut flop_rates)?;
        }
        // The peak measured again after the model rows, and the better of the two kept: a slow spell
        // of a VM during one measurement would put a row above 100%.
        peak_f32 = peak_f32.map(|peak| peak.max(gemm_peak(Kind::Float, device)));
        peak_bf16 = peak_bf16.map(|peak| peak.max(gemm_peak(Kind::BFloat16, device)));
        println!("GEMM peak, the better of before and after the model rows: {}", describe_peaks(peak_f32, peak_bf16));
        for rate in flop_rates {
            if let Some(peak) = if rate.bf16 { peak_bf16 } else { peak_f32 } {
                rows[rate.row].peak_fraction = Some((rate.ours / peak, rate.theirs / peak));
            }
        }
    }
    // Fashion-MNIST: 28 px images in memory on both sides. ELPV: 300×300 PNG files that the
    // reference's workers decode item by item and lejepa decodes once, when opening the data.
    let pipelines = [("pipeline", "fashion-mnist", "Fashion-MNIST"), ("pipeline-elpv", "elpv", "ELPV 300×300 PNG files")];
    for ((workload, data, what), precision) in pipelines.into_iter().flat_map(|p| args.precisions.iter().map(move |precision| (p, precision.as_str()))) {
        if !wants(workload) {
            continue;
        }
        let steps = (args.reps * args.steps).max(4);
        eprintln!("pipeline on {what}, {precision}: {} rounds of {steps} steps each …", args.rounds);
        let name = format!("(b) pipeline vit-tiny-patch4-depth6 {precision}, {what}");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            match our_pipeline(&args, data, steps, precision == "bf16", device) {
                Ok(run) => ours.push(run),
                Err(e) if data == "elpv" => {
                    eprintln!("skipped: {e:#}");
                    break;
                }
                Err(e) => return Err(e),
            }
            theirs.push(their_pipeline(&args, data, steps, precision)?);
        }
        if ours.is_empty() {
            continue;
        }
        let medians = |runs: &[Pipeline]| Pipeline {
            steady: median(&runs.iter().map(|r| r.steady).collect::<Vec<_>>()),
            end_to_end: median(&runs.iter().map(|r| r.end_to_end).collect::<Vec<_>>()),
            wait: median(&runs.iter().map(|r| r.wait).collect::<Vec<_>>()),
        };
        let (ours_rates, their_rates) = (ours.iter().map(|r| r.steady).collect(), theirs.iter().map(|r| r.steady).collect());
        let (ours, theirs) = (medians(&ours), medians(&theirs));
        rows.push(Row {
            name,
            unit: "img/s",
            ours: ours_rates,
            theirs: Some(their_rates),
            ours_bytes: None,
            theirs_bytes: None,
            peak_fraction: None,
            flops: None,
            note: format!(
                "medians: data wait ours {:.1}%, reference {:.1}%; with start-up (opening the data, first step) ours {:.1}, reference {:.1} img/s ({:.2}×)",
                100.0 * ours.wait,
                100.0 * theirs.wait,
                ours.end_to_end,
                theirs.end_to_end,
                ours.end_to_end / theirs.end_to_end
            ),
        });
    }
    if wants("views") {
        eprintln!("loader views/s …");
        let ours: Vec<f64> = (0..args.reps).map(|_| our_views(&args, 10)).collect::<Result<_>>()?;
        let theirs: Vec<f64> = (0..args.reps)
            .map(|_| reference(&args, "views", &["--batches".into(), "10".into()]).map(|v| v["views_per_second"].as_f64().unwrap_or(f64::NAN)))
            .collect::<Result<_>>()?;
        rows.push(Row { name: format!("(d) loader, {} workers, 2×28 + 4×12 px views", args.workers), unit: "views/s", ours, theirs: Some(theirs), ours_bytes: None, theirs_bytes: None, peak_fraction: None, flops: None, note: String::new() });
    }
    if wants("views-jpeg") {
        eprintln!("loader views/s on 1-megapixel JPEG files …");
        let folder = jpeg_folder(256)?;
        let batches = 6;
        let ours: Vec<f64> = (0..args.reps).map(|_| our_jpeg_views(&args, &folder, batches)).collect::<Result<_>>()?;
        let extra: Vec<String> = ["--folder", &folder.to_string_lossy(), "--batches", &batches.to_string(), "--batch", &JPEG_BATCH.to_string()]
            .iter().map(|s| s.to_string()).chain(["--global-size", "224", "--local-size", "96", "--local-views", "6"].map(String::from)).collect();
        let theirs: Vec<f64> = (0..args.reps)
            .map(|_| reference(&args, "views", &extra).map(|v| v["views_per_second"].as_f64().unwrap_or(f64::NAN)))
            .collect::<Result<_>>()?;
        let note = "1024×1024 RGB JPEG, decoded every time (our cache off); ours decodes at the size the views need".to_string();
        rows.push(Row { name: format!("(d) loader, {} workers, JPEG files, 2×224 + 6×96 px views", args.workers), unit: "views/s", ours, theirs: Some(theirs), ours_bytes: None, theirs_bytes: None, peak_fraction: None, flops: None, note });
    }
    if wants("sigreg") {
        let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
            t.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
        for (n, m) in [(256, 256), (1024, 1024), (4096, 256), (256, 4096), (4096, 1024), (4096, 4096)] {
            eprintln!("SIGReg N {n} M {m} …");
            let sigreg = SigReg { slices: m, ..SigReg::default() };
            let z = Tensor::randn([8, n, 64], (Kind::Float, device)).set_requires_grad(true);
            let run = |step: u64| {
                sigreg.forward(&z, step).mean(None::<Kind>).backward();
                sync(device);
            };
            measure_live_memory(); // for the warm-up too (see our_model_step)
            // Warm up for at least 0.2 s (a GPU runs small rows at idle clocks otherwise); the reference does the same.
            let (warm_up, mut step) = (Instant::now(), 0);
            while step == 0 || warm_up.elapsed().as_secs_f64() < 0.2 {
                run(step);
                step += 1;
            }
            let ours_bytes = measured(device, || run(step));
            let ours: Vec<f64> = (0..args.reps)
                .map(|r| {
                    let t = Instant::now();
                    run(step + 1 + r as u64);
                    t.elapsed().as_secs_f64()
                })
                .collect();
            // The reference keeps several [8, N, M, 17] f32 tensors alive; skip it where they cannot fit.
            let reference_bytes = 8 * n as u64 * m as u64 * 17 * 4 * 6;
            let (theirs, theirs_bytes, note) = if available.is_some_and(|kb| reference_bytes > kb * 1024 * 8 / 10) {
                (None, None, format!("reference needs ≈{:.0} GB: not run", reference_bytes as f64 / 1e9))
            } else {
                match reference(&args, "sigreg", &["--n".into(), n.to_string(), "--m".into(), m.to_string()]) {
                    Ok(v) => (Some(serde_json::from_value(v["seconds"].clone())?), v["peak_bytes"].as_u64(), String::new()),
                    // Out of memory, typically (the reference materialises [8, N, M, 17]): a row, not the end of the table.
                    Err(e) => (None, None, format!("reference failed: {}", last_line(&e.to_string()))),
                }
            };
            rows.push(Row { name: format!("(c) SIGReg fwd+bwd V 8, N {n}, M {m}"), unit: "s", ours, theirs, ours_bytes, theirs_bytes, peak_fraction: None, flops: None, note });
        }
    }

    let width = rows.iter().map(|row| row.name.chars().count()).max().unwrap_or(0).max(52);
    println!("\n{:<width$} {:>8} {:>22} {:>22} {:>7} {:>19} {:>13}  note", "workload", "unit", "lejepa median [min–max]", "PyTorch median [min–max]", "ratio", "peak MB ours/ref", "% GEMM peak");
    for row in &rows {
        let cell = |v: &[f64]| {
            let (lo, hi) = spread(v);
            format!("{:.3} [{:.3}–{:.3}]", median(v), lo, hi)
        };
        let mb = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1e6));
        println!(
            "{:<width$} {:>8} {:>22} {:>22} {:>7} {:>19} {:>13}  {}",
            row.name,
            row.unit,
            cell(&row.ours),
            row.theirs.as_deref().map_or("-".to_string(), cell),
            row.ratio().map_or("-".to_string(), |r| format!("{r:.2}×")),
            format!("{}/{}", mb(row.ours_bytes), mb(row.theirs_bytes)),
            row.peak_fraction.map_or("-".to_string(), |(a, b)| format!("{:.0}%/{:.0}%", 100.0 * a, 100.0 * b)),
            row.note
        );
    }
    if args.json {
        println!("{}", json!({"threads": args.threads, "cpu": cpu, "cpu_bf16_units": bf16_units, "mkl": mkl, "reference_mkl": args.reference_mkl, "gemm_peak_f32": peak_f32, "gemm_peak_bf16": peak_bf16, "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>()}));
    }
    Ok(())
}
