// Epps–Pulley statistic on CUDA, the same math as the CPU kernel in fused.rs, compiled at run time
// with NVRTC (src/shim/sigreg_cuda.cpp) for the GPU at hand, with SCALAR (float or double) and
// KNOTS defined by the compiler options.
//
// x is [B, N, M] (samples on axis 1, one slice per (b, m)). A block covers 32 neighbouring slices
// (threadIdx.x, so that a warp reads 32 consecutive floats) and a chunk of samples, strided over
// threadIdx.y. Per sample: one sincos, then cos(t_k x), sin(t_k x) for the evenly spaced knots
// t_k = k·dt by rotation (angle addition), all in registers: x is read once per pass and the
// [B, N, M, KNOTS] tensor of the autograd version never exists.
//   forward:  ecf_sums (one pass over x), then ecf_statistic on the per-slice sums;
//   backward: ecf_gradient (one pass over x).

#define ROWS 8  // blockDim.y

__device__ inline void sin_cos(float v, float* s, float* c) { sincosf(v, s, c); }
__device__ inline void sin_cos(double v, double* s, double* c) { sincos(v, s, c); }
__device__ inline float exponential(float v) { return expf(v); }
__device__ inline double exponential(double v) { return exp(v); }

// partial[chunk, b, m, :] = [Σ_n cos(t_0 x) … Σ_n cos(t_{K−1} x), Σ_n sin(t_0 x) … ] over the
// chunk's samples; the caller sums over the chunks (a fixed order: the result is deterministic).
extern "C" __global__ void ecf_sums(const SCALAR* __restrict__ x, SCALAR* __restrict__ partial,
                                    int batches, int samples, int slices, int rows_per_chunk, SCALAR dt) {
  const int m = blockIdx.x * 32 + threadIdx.x;
  const int chunk = blockIdx.y, b = blockIdx.z;
  const int n_end = min(samples, (chunk + 1) * rows_per_chunk);
  SCALAR cos_sum[KNOTS], sin_sum[KNOTS];
#pragma unroll
  for (int k = 0; k < KNOTS; ++k) cos_sum[k] = sin_sum[k] = 0;
  if (m < slices) {
    for (int n = chunk * rows_per_chunk + threadIdx.y; n < n_end; n += ROWS) {
      SCALAR s1, c1;
      sin_cos(dt * x[((size_t)b * samples + n) * slices + m], &s1, &c1);
      SCALAR c = 1, s = 0;
#pragma unroll
      for (int k = 0; k < KNOTS; ++k) {
        cos_sum[k] += c;
        sin_sum[k] += s;
        const SCALAR c_next = c * c1 - s * s1;
        s = s * c1 + c * s1;
        c = c_next;
      }
    }
  }
  // Sum the ROWS threads of each slice, one knot at a time through shared memory.
  __shared__ SCALAR rows[ROWS][33];
  SCALAR* out = partial + (((size_t)chunk * batches + b) * slices + m) * (2 * KNOTS);
#pragma unroll
  for (int j = 0; j < 2 * KNOTS; ++j) {
    rows[threadIdx.y][threadIdx.x] = j < KNOTS ? cos_sum[j] : sin_sum[j - KNOTS];
    __syncthreads();
    if (threadIdx.y == 0 && m < slices) {
      SCALAR total = 0;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) total += rows[r][threadIdx.x];
      out[j] = total;
    }
    __syncthreads();
  }
}

// From the sums over all n_total samples (all processes' shards added), per slice i = (b, m):
//   statistic[i] = N Σ_k w_k [(c̄_k − φ_k)² + s̄_k²], φ_k = e^{−t_k²/2}, w_k = dt·[1, 2, …, 2, 1]_k·φ_k,
//   coefficients[i, :] = scale·[a_0 … a_{K−1}, b_0 … b_{K−1}], a_k = 2 w_k t_k s̄_k, b_k = 2 w_k t_k (c̄_k − φ_k),
// the gradient ∂EP/∂x_n = Σ_k a_k cos(t_k x_n) − b_k sin(t_k x_n). One thread per slice.
extern "C" __global__ void ecf_statistic(const SCALAR* __restrict__ sums, SCALAR* __restrict__ statistic,
                                         SCALAR* __restrict__ coefficients, int slices_total, SCALAR n_total,
                                         SCALAR dt, SCALAR scale) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= slices_total) return;
  const SCALAR* sum = sums + (size_t)i * (2 * KNOTS);
  SCALAR* coefficient = coefficients + (size_t)i * (2 * KNOTS);
  SCALAR total = 0;
#pragma unroll
  for (int k = 0; k < KNOTS; ++k) {
    const SCALAR t = k * dt;
    const SCALAR phi = exponential(-t * t / 2);
    const SCALAR weight = (k == 0 || k == KNOTS - 1 ? 1 : 2) * dt * phi;
    const SCALAR cos_err = sum[k] / n_total - phi, sin_mean = sum[KNOTS + k] / n_total;
    total += weight * (cos_err * cos_err + sin_mean * sin_mean);
    coefficient[k] = scale * 2 * weight * t * sin_mean;
    coefficient[KNOTS + k] = scale * 2 * weight * t * cos_err;
  }
  statistic[i] = total * n_total;
}

// grad[b, n, m] = Σ_k a_k cos(t_k x) − b_k sin(t_k x), with coefficients[b, m, :] = [a_0 … a_{K−1},
// b_0 … b_{K−1}] (the upstream gradient already folded in).
extern "C" __global__ void ecf_gradient(const SCALAR* __restrict__ x, const SCALAR* __restrict__ coefficients,
                                        SCALAR* __restrict__ grad, int batches, int samples, int slices,
                                        int rows_per_chunk, SCALAR dt) {
  const int m = blockIdx.x * 32 + threadIdx.x;
  const int chunk = blockIdx.y, b = blockIdx.z;
  if (m >= slices) return;
  const SCALAR* coefficient = coefficients + ((size_t)b * slices + m) * (2 * KNOTS);
  SCALAR a[KNOTS], minus_b[KNOTS];
#pragma unroll
  for (int k = 0; k < KNOTS; ++k) {
    a[k] = coefficient[k];
    minus_b[k] = -coefficient[KNOTS + k];
  }
  const int n_end = min(samples, (chunk + 1) * rows_per_chunk);
  for (int n = chunk * rows_per_chunk + threadIdx.y; n < n_end; n += ROWS) {
    const size_t index = ((size_t)b * samples + n) * slices + m;
    SCALAR s1, c1;
    sin_cos(dt * x[index], &s1, &c1);
    SCALAR c = 1, s = 0, sum = 0;
#pragma unroll
    for (int k = 0; k < KNOTS; ++k) {
      sum += a[k] * c + minus_b[k] * s;
      const SCALAR c_next = c * c1 - s * s1;
      s = s * c1 + c * s1;
      c = c_next;
    }
    grad[index] = sum;
  }
}
