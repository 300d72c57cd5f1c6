// AdamW's update for all parameters in one call to ATen's _fused_adamw_, the kernel behind
// torch.optim.AdamW(fused=True): one multi-tensor kernel on CUDA, one vectorised pass per tensor
// on the CPU, instead of a dozen separate kernels per parameter (tch does not bind the
// multi-tensor operators).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "errors.h"

extern "C" {

// Updates params in place and the moments with them; `step` is the step being taken (1-based,
// for the bias corrections). Returns null, or a malloc'd message the caller frees.
char* lejepa_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs, int count,
                         double step, double lr, double beta1, double beta2, double weight_decay, double eps) {
  try {
    if (count == 0) return nullptr;
    std::vector<at::Tensor> p, g, m, v, steps;
    // The kernel reads the step count from a tensor per parameter (torch.optim keeps one each); one
    // shared tensor does, since the fused kernel only reads it.
    auto step_tensor = at::full({}, step, at::TensorOptions().dtype(at::kFloat).device(params[0]->device()));
    for (int i = 0; i < count; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(step_tensor);
    }
    c10::AutoGradMode no_grad(false);  // in-place on leaf parameters, as under torch.no_grad()
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, /*found_inf=*/std::nullopt);
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// param.grad = None (torch's zero_grad(set_to_none=True)): the next backward pass writes a fresh
// gradient instead of adding into a buffer that zero_grad first had to fill with zeros.
// Returns null, or a malloc'd message the caller frees.
char* lejepa_clear_grad(at::Tensor* param) {
  char* error = nullptr;
  lejepa::guarded(&error, [&] {
    TORCH_CHECK(param->defined(), "clear_grad: an undefined tensor has no gradient");
    param->mutable_grad() = at::Tensor();
  });
  return error;
}

}
