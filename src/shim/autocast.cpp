// bf16 autocast for CPU and CUDA. tch only switches CUDA autocast, and only inside a closure;
// libtorch's C++ API does both devices. Leaving the outermost region must clear the cast cache,
// or the next step silently reuses stale bf16 copies of the weights.
#include <ATen/autocast_mode.h>

extern "C" {

void lejepa_autocast_enter(int cuda) {
  const auto device = cuda ? at::kCUDA : at::kCPU;
  at::autocast::set_autocast_dtype(device, at::kBFloat16);
  at::autocast::set_autocast_enabled(device, true);
  at::autocast::increment_nesting();
}

// Switches autocast on `cuda`'s device type on or off without touching the nesting or the cast
// cache (a region inside a region, where some operators must run in f32); returns the old state.
bool lejepa_autocast_set_enabled(int cuda, bool enabled) {
  const auto device = cuda ? at::kCUDA : at::kCPU;
  const bool was_enabled = at::autocast::is_autocast_enabled(device);
  at::autocast::set_autocast_enabled(device, enabled);
  return was_enabled;
}

void lejepa_autocast_exit(int cuda) {
  const auto device = cuda ? at::kCUDA : at::kCPU;
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(device, false);
}

}
