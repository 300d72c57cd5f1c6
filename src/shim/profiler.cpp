// PyTorch's operator profiler (Kineto, what torch.profiler.profile drives from Python) around a
// stretch of lejepa's own code, saved as the same Chrome-trace JSON the reference's profiler writes:
// `lejepa bench --profile DIR` records one model step on each side, and
// benches/reference/compare_profiles.py sets the two operator lists side by side. tch binds no
// profiler.
#include <set>
#include <string>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "errors.h"

namespace profiler = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

extern "C" {

// Starts recording the operators of every thread (CPU activity, input shapes recorded, as the
// reference's `profile(activities=[CPU], record_shapes=True)`).
bool lejepa_profiler_start(char** error) {
  return lejepa::guarded(error, [&] {
    ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<ActivityType> activities{ActivityType::CPU};
    profiler::prepareProfiler(config, activities);
    profiler::enableProfiler(config, activities);
  });
}

// Stops recording and writes the trace to `path`.
bool lejepa_profiler_stop(const char* path, char** error) {
  return lejepa::guarded(error, [&] { profiler::disableProfiler()->save(path); });
}
}
