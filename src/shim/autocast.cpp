// bf16 autocast for CPU and CUDA. tch only switches CUDA autocast, and only inside a closure;
// libtorch's C++ API does both devices. Leaving the outermost region must clear the cast cache,
// or the next step silently reuses stale bf16 copies of the weights. Each function returns null, or
// a malloc'd message (a C++ exception caught here) that the caller frees.
#include <ATen/autocast_mode.h>

#include "errors.h"

extern "C" {

char* lejepa_autocast_enter(int cuda) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] {
    const auto device = cuda ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
  });
  return error;
}

// Switches autocast on `cuda`'s device type on or off without touching the nesting or the cast
// cache (a region inside a region, where some operators must run in f32); `*was_enabled` gets the
// old state.
char* lejepa_autocast_set_enabled(int cuda, bool enabled, bool* was_enabled) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] {
    const auto device = cuda ? at::kCUDA : at::kCPU;
    *was_enabled = at::autocast::is_autocast_enabled(device);
    at::autocast::set_autocast_enabled(device, enabled);
  });
  return error;
}

char* lejepa_autocast_exit(int cuda) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] {
    const auto device = cuda ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, false);
  });
  return error;
}

}
