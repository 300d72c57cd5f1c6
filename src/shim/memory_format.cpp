// Channels-last (NHWC) copies of image batches: tch exposes no memory format, and libtorch's CPU
// convolutions (oneDNN) run faster on NHWC activations; the layout then carries through the network.
#include <ATen/ATen.h>

#include "errors.h"

extern "C" {

// `*out` becomes a new tensor holding `x` in channels-last layout. Returns null, or a malloc'd
// message the caller frees.
char* lejepa_channels_last(at::Tensor* x, at::Tensor** out) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] { *out = new at::Tensor(x->contiguous(at::MemoryFormat::ChannelsLast)); });
  return error;
}

}
