// c10d, the engine behind torch.distributed, for lejepa's data-parallel training: a TCPStore for
// the rendezvous, ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA) for the collectives, and one
// differentiable all-reduce. tch binds none of this; Rust sees the C functions at the bottom.
//
// Every function catches C++ exceptions (a peer that died, a timeout, a bad address) and hands the
// message back as a malloc'd string (errors.h), so Rust can stop with a clear error instead of aborting.
#include <cstdlib>
#include <cstring>
#include <string>

#include <torch/autograd.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef LEJEPA_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "errors.h"

namespace {

using lejepa::copy_string;
using lejepa::guarded;

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

void all_reduce_sum(Group* group, std::vector<at::Tensor>& tensors) {
  group->backend->allreduce(tensors, c10d::AllreduceOptions{})->wait();
}

// Sum over all processes whose backward is the same sum of the incoming gradients
// (torch.distributed.nn.functional.all_reduce): with gradients averaged afterwards, a loss that
// depends on globally reduced quantities gets exactly the single-process gradient.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    std::vector<at::Tensor> tensors{x.clone()};
    all_reduce_sum(reinterpret_cast<Group*>(group), tensors);
    return tensors[0];
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto group = reinterpret_cast<Group*>(ctx->saved_data["group"].toInt());
    std::vector<at::Tensor> tensors{grads[0].contiguous().clone()};
    all_reduce_sum(group, tensors);
    return {tensors[0], at::Tensor()};
  }
};

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1";
}

}  // namespace

extern "C" {

// backend: "gloo" or "nccl". Rank 0 hosts the store on host:port; every rank waits for all
// `world` processes (up to the timeout). Returns null and sets *error on failure.
void* lejepa_dist_new(const char* backend, const char* host, int port, int rank, int world, int64_t timeout_ms,
                      char** error) {
  Group* group = nullptr;
  guarded(error, [&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(port);
    store_options.isServer = rank == 0;
    store_options.numWorkers = world;
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(host, store_options);

    c10::intrusive_ptr<c10d::Backend> process_group;
    const std::string name(backend);
    if (name == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // On one machine bind to loopback (the hostname may not resolve); across machines use
      // torch's choice (GLOO_SOCKET_IFNAME, else the address the hostname resolves to).
      if (std::getenv("GLOO_SOCKET_IFNAME") != nullptr) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(std::getenv("GLOO_SOCKET_IFNAME")));
      } else if (is_loopback(host)) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      process_group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    } else if (name == "nccl") {
#ifdef LEJEPA_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      process_group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
      throw std::runtime_error("this lejepa was built without NCCL (no CUDA libtorch or nccl.h at build time)");
#endif
    } else {
      throw std::runtime_error("unknown backend '" + name + "' (gloo or nccl)");
    }
    group = new Group{store, process_group};
  });
  return group;
}

void lejepa_dist_free(void* group) {
  delete static_cast<Group*>(group);
}

void lejepa_dist_free_string(char* s) {
  std::free(s);
}

// In-place sum of the tensor over all processes (no autograd). Returns 0, or 1 with *error.
int lejepa_dist_all_reduce(void* group, at::Tensor* tensor, char** error) {
  return guarded(error, [&] {
    std::vector<at::Tensor> one{*tensor};
    all_reduce_sum(static_cast<Group*>(group), one);
  }) ? 0 : 1;
}

// In-place copy of root's tensor to every process.
int lejepa_dist_broadcast(void* group, at::Tensor* tensor, int root, char** error) {
  return guarded(error, [&] {
    std::vector<at::Tensor> one{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    static_cast<Group*>(group)->backend->broadcast(one, options)->wait();
  }) ? 0 : 1;
}

// The differentiable sum (see AllReduceSum). Returns a new tensor, or null with *error.
at::Tensor* lejepa_dist_all_reduce_autograd(void* group, at::Tensor* x, char** error) {
  at::Tensor* result = nullptr;
  guarded(error, [&] {
    result = new at::Tensor(AllReduceSum::apply(*x, reinterpret_cast<int64_t>(group)));
  });
  return result;
}

// Key/value exchange through the store (e.g. rank 0 tells the others its run directory).
int lejepa_dist_store_set(void* group, const char* key, const char* value, char** error) {
  return guarded(error, [&] {
    std::string v(value);
    static_cast<Group*>(group)->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
  }) ? 0 : 1;
}

// Waits for the key (up to the store's timeout); *value is malloc'd, free with lejepa_dist_free_string.
int lejepa_dist_store_get(void* group, const char* key, char** value, char** error) {
  return guarded(error, [&] {
    auto bytes = static_cast<Group*>(group)->store->get(key);
    copy_string(value, std::string(bytes.begin(), bytes.end()));
  }) ? 0 : 1;
}

}  // extern "C"
