#include "kernels/combine.h"
#include "kernels/cuda_common.cuh"

namespace sef {
namespace cuda {
namespace {

// Thread t owns elements [4t, 4t + 4) of the flat space and adds the rows in
// order, one vector load per row where the row is aligned.
template <class R>
__global__ void __launch_bounds__(kThreads) combine_kernel(const R* ring, int64_t rows, int64_t cols, int64_t ld,
                                                           const float* coeffs, float* out) {
  __shared__ float c[kCudaMaxRows];
  for (int i = threadIdx.x; i < rows; i += kThreads) c[i] = coeffs[i];
  __syncthreads();
  const int64_t start = 4 * (int64_t(blockIdx.x) * kThreads + threadIdx.x);
  if (start >= cols) return;
  const int n = cols - start < 4 ? int(cols - start) : 4;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t i = 0; i < rows; ++i) {
    const R* row = ring + i * ld + start;
    if (n == 4) {
      const Pack4<R> x = load4(row, pack_aligned(ring + i * ld));
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[j] = fmaf(c[i], to_float(x.v[j]), acc[j]);
    } else {
      for (int j = 0; j < n; ++j) acc[j] = fmaf(c[i], to_float(row[j]), acc[j]);
    }
  }
  if (n == 4) store4(out + start, Pack4<float>{{acc[0], acc[1], acc[2], acc[3]}}, pack_aligned(out));
  else
    for (int j = 0; j < n; ++j) out[start + j] = acc[j];
}

}  // namespace
}  // namespace cuda

void combine_cuda(MatRef ring, const float* coeffs, float* out, cudaStream_t stream) {
  const int64_t blocks = (ring.cols + 4 * cuda::kThreads - 1) / (4 * cuda::kThreads);
  if (blocks == 0) return;
  visit_ring(ring.dtype, [&](auto r) {
    using R = decltype(r);
    cuda::combine_kernel<R><<<unsigned(blocks), cuda::kThreads, 0, stream>>>(static_cast<const R*>(ring.data), ring.rows,
                                                                              ring.cols, ring.ld, coeffs, out);
  });
}

}  // namespace sef
