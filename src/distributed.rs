//! Data-parallel training on c10d, the engine behind torch.distributed (Gloo between CPU processes,
//! NCCL between GPUs), through a small C++ shim (src/shim/distributed.cpp).
//!
//! One process per device; rank r takes the r-th shard of every global batch. A distributed step is
//! the single-process step on the global batch when every quantity that the loss takes over the
//! batch is reduced over all processes:
//! - SIGReg: the cos/sin sums of the empirical characteristic function ([`ProcessGroup::sum`],
//!   differentiable), and N in its ×N factor is the global batch;
//! - BatchNorm: the batch mean and variance (SyncBatchNorm, [`sync_batch_norm`]);
//! - the parameters' gradients, averaged after backward ([`ProcessGroup::average_gradients`]).
//!
//! Why averaging works with a differentiable sum whose backward sums too (as
//! torch.distributed.nn.functional.all_reduce): with ℓ_r the loss of rank r, the global loss is
//! L = (1/W) Σ_r ℓ_r (the invariance term is a per-sample mean over equal shards; the SIGReg term is
//! the same on every rank). Backward through S = Σ_q s_q hands rank q the gradient Σ_r ∂ℓ_r/∂S, so
//! (1/W) Σ_q ∇θ on rank q = ∇θ L exactly.

use std::ffi::{CString, c_char, c_int, c_void};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tch::{Kind, Tensor, nn};
use torch_sys::C_tensor;

use crate::ffi::take_string;

unsafe extern "C" {
    fn lejepa_dist_new(backend: *const c_char, host: *const c_char, port: c_int, rank: c_int, world: c_int, timeout_ms: i64, error: *mut *mut c_char) -> *mut c_void;
    fn lejepa_dist_free(group: *mut c_void);
    fn lejepa_dist_all_reduce(group: *mut c_void, tensor: *mut C_tensor, error: *mut *mut c_char) -> c_int;
    fn lejepa_dist_broadcast(group: *mut c_void, tensor: *mut C_tensor, root: c_int, error: *mut *mut c_char) -> c_int;
    fn lejepa_dist_all_reduce_autograd(group: *mut c_void, x: *mut C_tensor, error: *mut *mut c_char) -> *mut C_tensor;
    fn lejepa_dist_store_set(group: *mut c_void, key: *const c_char, value: *const c_char, error: *mut *mut c_char) -> c_int;
    fn lejepa_dist_store_get(group: *mut c_void, key: *const c_char, value: *mut *mut c_char, error: *mut *mut c_char) -> c_int;
}

/// Who this process is and where the group meets: flags, else torchrun's environment variables.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub world: usize,
    pub rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// "gloo" or "nccl".
    pub backend: String,
    /// How long a collective (or the rendezvous) may wait for the others before failing.
    pub timeout: Duration,
}

impl Launch {
    /// From explicit values, falling back to WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT. None when
    /// neither gives a world size (a plain single-process run); a world of one given explicitly is a
    /// group of one (as torchrun makes it), which exercises the whole distributed path.
    pub fn resolve(
        world: Option<usize>,
        rank: Option<usize>,
        master_addr: Option<String>,
        master_port: Option<u16>,
        cuda: bool,
        timeout: Duration,
    ) -> Result<Option<Launch>> {
        fn env<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
            match std::env::var(name) {
                Ok(v) => Ok(Some(v.trim().parse().map_err(|_| anyhow::anyhow!("environment variable {name}='{v}' is not valid"))?)),
                Err(_) => Ok(None),
            }
        }
        let world = match world {
            Some(w) => w,
            None => match env("WORLD_SIZE")? {
                Some(w) => w,
                None => return Ok(None),
            },
        };
        ensure!(world >= 1, "--world-size (WORLD_SIZE) must be at least 1");
        let rank = match rank {
            Some(r) => r,
            None if world == 1 => 0,
            None => env("RANK")?.context("a distributed run (--world-size > 1) needs --rank or RANK")?,
        };
        ensure!(rank < world, "--rank {rank} is not below --world-size {world}");
        let master_addr = match master_addr {
            Some(a) => a,
            None => env("MASTER_ADDR")?.unwrap_or_else(|| "127.0.0.1".to_string()),
        };
        let master_port = match master_port {
            Some(p) => p,
            None => env("MASTER_PORT")?.unwrap_or(29500),
        };
        let backend = if cuda { "nccl" } else { "gloo" }.to_string();
        Ok(Some(Launch { world, rank, master_addr, master_port, backend, timeout }))
    }
}

/// A c10d process group and its TCPStore. Collectives must be called in the same order on every
/// rank; all of lejepa's are issued from the training thread.
pub struct ProcessGroup {
    raw: *mut c_void,
    pub rank: usize,
    pub world: usize,
    /// Where the backend's tensors must live (NCCL: the process's GPU; Gloo: the CPU).
    device: tch::Device,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ProcessGroup(rank {} of {})", self.rank, self.world)
    }
}

// SAFETY: c10d backends may be used from any thread; lejepa calls them from one thread at a time.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from lejepa_dist_new and is freed once.
        unsafe { lejepa_dist_free(self.raw) };
    }
}

impl ProcessGroup {
    /// Joins the group: rank 0 hosts the store at master_addr:master_port, everyone waits until
    /// all `world` processes have arrived (up to the timeout).
    pub fn join(launch: &Launch, device: tch::Device) -> Result<ProcessGroup> {
        let backend = CString::new(launch.backend.as_str())?;
        let host = CString::new(launch.master_addr.as_str())?;
        let (rank, world, port, timeout) = (launch.rank as c_int, launch.world as c_int, launch.master_port as c_int, launch.timeout);
        // The rendezvous runs on its own thread: a client whose port is held by some other program connects
        // and then waits for an answer that never comes (libtorch's store applies no timeout there).
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut error = std::ptr::null_mut();
            // SAFETY: valid C strings; the shim returns null and an error string on failure.
            let raw = unsafe { lejepa_dist_new(backend.as_ptr(), host.as_ptr(), port, rank, world, timeout.as_millis() as i64, &mut error) };
            let outcome = if raw.is_null() { Err(take_string(error)) } else { Ok(raw as usize) }; // an address, to cross threads
            let _ = sender.send(outcome);
        });
        let place = format!("rank {} of {}: could not join the {} group at {}:{}", launch.rank, launch.world, launch.backend, launch.master_addr, launch.master_port);
        let raw = match receiver.recv_timeout(timeout + Duration::from_secs(5)) {
            Ok(Ok(raw)) => raw as *mut c_void,
            Ok(Err(message)) if message.contains("EADDRINUSE") => {
                bail!("{place}: port {} is in use by another program; choose a free one with --master-port ({message})", launch.master_port)
            }
            Ok(Err(message)) => bail!("{place} within {timeout:?}: {message}"),
            Err(_) => bail!(
                "{place}: no answer within {timeout:?}. Something accepts connections on port {} but is not rank 0's store \
                 (another program using the port? choose a free one with --master-port), or rank 0 is not running",
                launch.master_port
            ),
        };
        let device = if launch.backend == "nccl" { device } else { tch::Device::Cpu };
        Ok(ProcessGroup { raw, rank: launch.rank, world: launch.world, device })
    }

    fn check(&self, status: c_int, error: *mut c_char, what: &str) -> Result<()> {
        if status != 0 {
            bail!(
                "rank {} of {}: {what} failed — another process has probably stopped or crashed (see its output): {}",
                self.rank, self.world, take_string(error)
            );
        }
        Ok(())
    }

    /// In place: each tensor becomes its sum over all processes. No autograd.
    pub fn sum_in_place(&self, tensors: &[&Tensor]) -> Result<()> {
        for tensor in tensors {
            self.on_backend_device(tensor, |t| {
                let mut error = std::ptr::null_mut();
                // SAFETY: `t` is a live tensor borrowed for the call.
                let status = unsafe { lejepa_dist_all_reduce(self.raw, t.as_ptr() as *mut C_tensor, &mut error) };
                self.check(status, error, "all-reduce")
            })?;
        }
        Ok(())
    }

    /// Runs an in-place collective on `tensor`, through a copy when it lives elsewhere than the
    /// backend needs (the CPU scalars of the training loop under NCCL).
    fn on_backend_device(&self, tensor: &Tensor, collective: impl Fn(&Tensor) -> Result<()>) -> Result<()> {
        if tensor.device() == self.device {
            return collective(tensor);
        }
        let moved = tensor.to_device(self.device);
        collective(&moved)?;
        tch::no_grad(|| tensor.shallow_clone().copy_(&moved));
        Ok(())
    }

    /// The sum of `x` over all processes, differentiable: its backward sums the incoming gradients
    /// over all processes too (see the module comment for why that is the right gradient).
    pub fn sum(&self, x: &Tensor) -> Result<Tensor> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `x` is live for the call; the shim returns a new tensor we own, or null.
        let result = unsafe { lejepa_dist_all_reduce_autograd(self.raw, x.as_ptr() as *mut C_tensor, &mut error) };
        if result.is_null() {
            self.check(1, error, "all-reduce")?;
        }
        // SAFETY: a fresh at::Tensor allocated by the shim, owned from here on.
        Ok(unsafe { Tensor::from_ptr(result) })
    }

    /// In place: every process gets rank `root`'s values.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        self.on_backend_device(tensor, |t| {
            let mut error = std::ptr::null_mut();
            // SAFETY: `t` is live for the call.
            let status = unsafe { lejepa_dist_broadcast(self.raw, t.as_ptr() as *mut C_tensor, root as c_int, &mut error) };
            self.check(status, error, "broadcast")
        })
    }

    /// Returns once every process has called it (an all-reduce of one number).
    pub fn barrier(&self) -> Result<()> {
        self.sum_in_place(&[&Tensor::zeros([1], (Kind::Float, tch::Device::Cpu))])
    }

    /// Rank 0 publishes `value` under `key`; every rank returns it (waiting up to the timeout).
    pub fn share_string(&self, key: &str, value: Option<&str>) -> Result<String> {
        let key = CString::new(key)?;
        let mut error = std::ptr::null_mut();
        if self.rank == 0 {
            let value = CString::new(value.context("rank 0 must give the value it shares")?)?;
            // SAFETY: valid C strings for the call.
            let status = unsafe { lejepa_dist_store_set(self.raw, key.as_ptr(), value.as_ptr(), &mut error) };
            self.check(status, error, "store set")?;
        }
        let mut out = std::ptr::null_mut();
        // SAFETY: as above; `out` receives a malloc'd string on success.
        let status = unsafe { lejepa_dist_store_get(self.raw, key.as_ptr(), &mut out, &mut error) };
        self.check(status, error, "store get")?;
        Ok(take_string(out))
    }

    /// Every rank publishes `value` under `key`; every rank returns all of them, in rank order.
    pub fn gather_strings(&self, key: &str, value: &str) -> Result<Vec<String>> {
        let mut error = std::ptr::null_mut();
        let mine = CString::new(format!("{key}/{}", self.rank))?;
        let value = CString::new(value)?;
        // SAFETY: valid C strings for the call.
        let status = unsafe { lejepa_dist_store_set(self.raw, mine.as_ptr(), value.as_ptr(), &mut error) };
        self.check(status, error, "store set")?;
        (0..self.world)
            .map(|rank| {
                let key = CString::new(format!("{key}/{rank}"))?;
                let mut out = std::ptr::null_mut();
                // SAFETY: as above; `out` receives a malloc'd string on success.
                let status = unsafe { lejepa_dist_store_get(self.raw, key.as_ptr(), &mut out, &mut error) };
                self.check(status, error, "store get")?;
                Ok(take_string(out))
            })
            .collect()
    }

    /// Gradients ← their mean over all processes, in one flat buffer per call (a parameter without
    /// a gradient counts as zero, so every rank reduces the same layout).
    pub fn average_gradients(&self, params: &[Tensor]) -> Result<()> {
        if self.world == 1 || params.is_empty() {
            return Ok(());
        }
        tch::no_grad(|| {
            let grads: Vec<Tensor> = params
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() { g.flatten(0, -1) } else { Tensor::zeros([p.numel() as i64], (p.kind(), p.device())) }
                })
                .collect();
            let flat = Tensor::cat(&grads, 0);
            self.sum_in_place(&[&flat])?;
            let flat = flat / self.world as f64;
            let mut offset = 0;
            for p in params {
                let n = p.numel() as i64;
                let mut g = p.grad();
                let mean = flat.narrow(0, offset, n).view_as(p);
                if g.defined() {
                    g.copy_(&mean);
                } else {
                    // A parameter no rank's loss touched stays without gradient (AdamW skips it).
                    ensure!(mean.abs().max().double_value(&[]) == 0.0, "a parameter has a gradient on some ranks only");
                }
                offset += n;
            }
            Ok(())
        })
    }

    /// Every tensor ← rank 0's (parameters at the start, the whole state after a resume).
    pub fn broadcast_from_rank0(&self, tensors: &[Tensor]) -> Result<()> {
        tch::no_grad(|| tensors.iter().try_for_each(|t| self.broadcast(t, 0)))
    }
}

/// SyncBatchNorm's training-mode forward: normalise with the mean and (biased) variance of the
/// batch over all processes, in two exact passes (mean, then the mean squared deviation), and
/// update the running statistics with the global values as torch does (unbiased variance).
/// Channels are axis 1 (`[B, C]` or `[B, C, H, W]`).
pub fn sync_batch_norm(x: &Tensor, bn: &nn::BatchNorm, group: &ProcessGroup) -> Result<Tensor> {
    let input_kind = x.kind();
    let x = if input_kind == Kind::Double { x.shallow_clone() } else { x.to_kind(Kind::Float) };
    let channels = x.size()[1];
    let axes: Vec<i64> = (0..x.dim() as i64).filter(|&a| a != 1).collect();
    let mut shape = vec![1i64; x.dim()];
    shape[1] = channels;
    let local_count = (x.numel() as i64 / channels) as f64;
    let count = local_count * group.world as f64;

    let mean = group.sum(&x.sum_dim_intlist(&axes[..], false, None::<Kind>))? / count; // [C]
    let centered = &x - mean.view(&shape[..]);
    let variance = group.sum(&centered.square().sum_dim_intlist(&axes[..], false, None::<Kind>))? / count;
    // lejepa's batch norms all use PyTorch's momentum and eps (tch keeps its config private).
    let nn::BatchNormConfig { momentum, eps, .. } = nn::BatchNormConfig::default();
    tch::no_grad(|| {
        let unbiased = &variance * (count / (count - 1.0).max(1.0));
        let mut running_mean = bn.running_mean.shallow_clone();
        let mut running_var = bn.running_var.shallow_clone();
        let _ = running_mean.g_mul_scalar_(1.0 - momentum).g_add_(&(mean.detach().to_kind(running_mean.kind()) * momentum));
        let _ = running_var.g_mul_scalar_(1.0 - momentum).g_add_(&(unbiased.detach().to_kind(running_var.kind()) * momentum));
    });
    let normalized = centered / (variance + eps).sqrt().view(&shape[..]);
    let weight = bn.ws.as_ref().map(|w| w.to_kind(x.kind()).view(&shape[..]));
    let bias = bn.bs.as_ref().map(|b| b.to_kind(x.kind()).view(&shape[..]));
    Ok(match (weight, bias) {
        (Some(w), Some(b)) => normalized * w + b,
        (Some(w), None) => normalized * w,
        (None, Some(b)) => normalized + b,
        (None, None) => normalized,
    })
}
