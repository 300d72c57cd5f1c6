// Host and GPU memory where tch has no binding.
#include <ATen/ATen.h>

#include "errors.h"

extern "C" {

// host.pin_memory().to(device, non_blocking=true): a copy queued like a kernel instead of one
// that waits for the GPU (tch's pin_memory passes the deprecated device argument, which warns at
// every call).
// Returns null, or a malloc'd message (no CUDA, a bad index) that the caller frees.
char* lejepa_to_device_nonblocking(at::Tensor* host, int device_index, at::Tensor** out) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] {
    auto device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
    *out = new at::Tensor(host->pin_memory().to(device, /*non_blocking=*/true));
  });
  return error;
}

}

// The CUDA caching allocator's counters, for the benchmark's memory column on a GPU. The same
// numbers as torch.cuda.memory_allocated / max_memory_allocated / reset_peak_memory_stats, which
// the PyTorch reference reads. Compiled only when the CUDA headers are there (build.rs); lejepa
// then declares these under cfg(lejepa_cuda).
#ifdef LEJEPA_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>

extern "C" {

// Each returns null, or a malloc'd message (e.g. a device index the allocator does not know).
char* lejepa_cuda_allocated_bytes(int device, int64_t* out) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] { *out = c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[0].current; });  // 0: all pools
  return error;
}

char* lejepa_cuda_peak_allocated_bytes(int device, int64_t* out) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] { *out = c10::cuda::CUDACachingAllocator::getDeviceStats(device).allocated_bytes[0].peak; });
  return error;
}

char* lejepa_cuda_reset_peak(int device) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] { c10::cuda::CUDACachingAllocator::resetPeakStats(device); });
  return error;
}

// Hands the cached blocks back to the driver (torch.cuda.empty_cache), so that another process on
// the same GPU (the benchmark's reference) can have them.
char* lejepa_cuda_empty_cache() {
  char* error = nullptr;
  lejepa::guarded(&error, [&] { c10::cuda::CUDACachingAllocator::emptyCache(); });
  return error;
}

}
#endif
