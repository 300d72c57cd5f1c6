//! "Will this run fit?", answered before training: one forward/backward pass of the real model
//! at two small batch sizes, the peak resident memory of each (Linux /proc), extrapolated to the
//! configured batch and compared with the memory available.

use anyhow::{Result, bail};

fn proc_kb(file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat); 0 where /proc cannot tell.
/// A fault per fresh page touched: a step that reuses its buffers takes few.
pub fn minor_page_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name.split_whitespace().nth(7).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// Peak resident bytes of `work` above the resident size before it (None where /proc cannot tell).
pub fn peak_growth(work: impl FnOnce()) -> Option<u64> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?; // resets VmHWM to the current RSS
    let before = proc_kb("/proc/self/status", "VmRSS:")?;
    work();
    let peak = proc_kb("/proc/self/status", "VmHWM:")?;
    Some(peak.saturating_sub(before) * 1024)
}

// Each returns null, or a malloc'd message: a C++ exception the shim caught (src/shim/cuda_memory.cpp).
#[cfg(lejepa_cuda)]
unsafe extern "C" {
    fn lejepa_cuda_allocated_bytes(device: i32, out: *mut i64) -> *mut std::ffi::c_char;
    fn lejepa_cuda_peak_allocated_bytes(device: i32, out: *mut i64) -> *mut std::ffi::c_char;
    fn lejepa_cuda_reset_peak(device: i32) -> *mut std::ffi::c_char;
    fn lejepa_cuda_empty_cache() -> *mut std::ffi::c_char;
}

/// Returns the CUDA caching allocator's free blocks to the driver (torch.cuda.empty_cache), for
/// another process on the same GPU. Does nothing without the CUDA headers at build time.
pub fn cuda_empty_cache() {
    #[cfg(lejepa_cuda)]
    // SAFETY: frees only blocks no tensor uses.
    if let Err(e) = crate::ffi::shim_status(unsafe { lejepa_cuda_empty_cache() }) {
        eprintln!("warning: emptying the CUDA cache failed: {e}");
    }
}

/// Peak bytes the CUDA caching allocator handed out during `work`, above those in use before it
/// (torch.cuda.max_memory_allocated − memory_allocated, as the PyTorch reference measures).
/// `work` must synchronise the device. None when lejepa was built without the CUDA headers.
pub fn cuda_peak_growth(device: usize, work: impl FnOnce()) -> Option<u64> {
    #[cfg(lejepa_cuda)]
    {
        use crate::ffi::shim_status;
        let device = device as i32;
        let (mut before, mut peak) = (0i64, 0i64);
        // SAFETY: reads and resets the allocator's counters; a device it does not know is an error, not a crash.
        let counted = shim_status(unsafe { lejepa_cuda_reset_peak(device) })
            .and_then(|()| shim_status(unsafe { lejepa_cuda_allocated_bytes(device, &mut before) }));
        work();
        let counted = counted.and_then(|()| shim_status(unsafe { lejepa_cuda_peak_allocated_bytes(device, &mut peak) }));
        match counted {
            Ok(()) => Some(peak.saturating_sub(before) as u64),
            Err(e) => {
                eprintln!("warning: no CUDA memory figure for cuda:{device}: {e}");
                None
            }
        }
    }
    #[cfg(not(lejepa_cuda))]
    {
        let _ = device;
        work();
        None
    }
}

unsafe extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
    fn malloc_trim(pad: usize) -> i32;
}

const M_TRIM_THRESHOLD: i32 = -1;
const M_MMAP_THRESHOLD: i32 = -3;
const M_MMAP_MAX: i32 = -4;

/// For measuring: glibc raises its mmap threshold after large frees, after which freed tensors
/// stay resident and peaks stop measuring live memory; a low fixed threshold keeps large buffers
/// mmapped and returned on free. Slow to run with: every large tensor is then mapped and
/// page-faulted in afresh (a training step ran about 1.5× slower so).
pub fn measure_live_memory() {
    // SAFETY: mallopt and malloc_trim only change allocator tuning and return free memory.
    unsafe {
        mallopt(M_MMAP_MAX, 65536); // glibc's defaults, undoing run_fast
        mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        mallopt(M_MMAP_THRESHOLD, 256 * 1024);
        malloc_trim(0); // free heap memory kept by the running settings would hide the step's growth
    }
}

/// For running, after [`measure_live_memory`]: every buffer from the heap, and the heap never
/// trimmed. A training step frees and re-allocates the same buffers every step; glibc's defaults
/// map tensors above 32 MiB afresh each time and give the heap back above 64 MiB free, so each step
/// page-faulted its memory in again (143,000 faults per ViT step of `lejepa bench`, against 35–1,500
/// so; BENCHMARKS.md). The cost: resident memory stays at the step's peak between steps.
/// This holds for the main thread's heap, where training runs; other threads' arenas still map any
/// buffer larger than their 64 MiB heaps.
pub fn run_fast() {
    // SAFETY: as above.
    unsafe {
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
        mallopt(M_MMAP_MAX, 0);
    }
}

/// Estimated peak bytes of a training step at `batch` samples, from steps at 4 and 8 samples
/// (`step(n)` runs one forward/backward with n samples). None where it cannot be measured.
pub fn estimate_step_bytes(batch: usize, mut step: impl FnMut(usize)) -> Option<u64> {
    measure_live_memory();
    step(4); // warm-up: first-call allocations are not per-sample cost
    let small = peak_growth(|| step(4));
    let large = peak_growth(|| step(8));
    run_fast();
    let (small, large) = (small?, large?);
    let per_sample = large.saturating_sub(small) as f64 / 4.0;
    Some(large + (per_sample * batch.saturating_sub(8) as f64) as u64)
}

/// Fails with a clear message when the estimated step does not fit in the available memory.
pub fn ensure_fits(step_bytes: u64, what: &str) -> Result<()> {
    let Some(available_kb) = proc_kb("/proc/meminfo", "MemAvailable:") else { return Ok(()) };
    let available = available_kb * 1024;
    if step_bytes > available * 9 / 10 {
        bail!(
            "{what} needs about {:.1} GB per step but only {:.1} GB of memory are available; \
             lower --batch-size (and raise --grad-accum to keep the effective batch) or use fewer/smaller views",
            step_bytes as f64 / 1e9,
            available as f64 / 1e9
        );
    }
    Ok(())
}

/// The process's peak resident memory since start (or since the last estimate).
pub fn peak_resident_bytes() -> Option<u64> {
    proc_kb("/proc/self/status", "VmHWM:").map(|kb| kb * 1024)
}
