// MKL chooses its matrix-multiply kernels by CPU vendor: on an AMD CPU it skips the AVX2 kernels
// it runs on Intel's, though the CPU has every instruction they use (sgemm at the ViT's shapes runs
// faster with Intel's kernels on AMD CPUs; the measurement is in BENCHMARKS.md). The PyTorch wheel links MKL into libtorch_cpu.so but exports its symbols and calls them
// through the PLT, so this definition, exported from our executable (build.rs), answers MKL's
// vendor question in place of its own. The instruction set MKL then uses is still what CPUID
// reports, so nothing runs that the CPU lacks. LEJEPA_MKL_VENDOR_CHECK=1 keeps MKL's own answer.
#include <dlfcn.h>
#include <cstdlib>
#include <cstring>

extern "C" {

static bool keep_mkl_vendor_check() {
  const char* value = std::getenv("LEJEPA_MKL_VENDOR_CHECK");
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// MKL's own function of that name (in libtorch_cpu.so), found past ours: its answer, or -1 where
// libtorch has no MKL (then nothing calls ours either).
static int mkl_own_answer() {
  using Check = int (*)();
  static Check own = reinterpret_cast<Check>(dlsym(RTLD_NEXT, "mkl_serv_intel_cpu_true"));
  return own != nullptr ? own() : -1;
}

int mkl_serv_intel_cpu_true() {
  static const bool keep = keep_mkl_vendor_check();
  return keep ? mkl_own_answer() == 1 : 1;
}

// What MKL is told (1: an Intel CPU), and whether the name MKL calls resolves to this file's
// definition, i.e. whether the export worked: `lejepa bench` prints both.
int lejepa_mkl_told_intel() { return mkl_serv_intel_cpu_true(); }
int lejepa_mkl_vendor_check_replaced() {
  return dlsym(RTLD_DEFAULT, "mkl_serv_intel_cpu_true") == reinterpret_cast<void*>(&mkl_serv_intel_cpu_true);
}
int lejepa_mkl_own_answer() { return mkl_own_answer(); }
}
