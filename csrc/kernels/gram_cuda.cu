#include "kernels/cuda_common.cuh"
#include "kernels/gram.h"

namespace sef {
namespace cuda {
namespace {

// Floats of x staged in shared memory at a time: rows padded to a multiple of
// 4, each row of the tile padded by one float against bank conflicts.
constexpr int kGramTile = 8192;

// Block s computes the Gram of span s. Each thread owns one 4 x 4 block
// (bi <= bj) of the Gram: float32 sums over a tile, float64 across tiles.
template <class R>
__global__ void __launch_bounds__(kThreads) gram_kernel(const R* x, int rows, int64_t cols, int64_t ld, int64_t spans,
                                                        double* partials) {
  __shared__ float tile[kGramTile + kGramMaxRowsCuda];
  const int padded = (rows + 3) & ~3, blocks = padded / 4, width = kGramTile / padded, stride = width + 1;
  int bi = -1, bj = -1;
  for (int b = threadIdx.x, i = 0; i < blocks; b -= blocks - i, ++i)
    if (b < blocks - i) {
      bi = i;
      bj = i + b;
      break;
    }
  double total[4][4] = {};
  const int64_t stop = (blockIdx.x + 1) * cols / spans;
  for (int64_t start = blockIdx.x * cols / spans; start < stop; start += width) {
    const int n = stop - start < width ? int(stop - start) : width;
    __syncthreads();
    for (int idx = threadIdx.x; idx < padded * n; idx += kThreads) {
      const int r = idx / n, k = idx % n;
      tile[r * stride + k] = r < rows ? to_float(x[r * ld + start + k]) : 0.0f;
    }
    __syncthreads();
    if (bi < 0) continue;
    float acc[4][4] = {};
    for (int k = 0; k < n; ++k) {
      float u[4], v[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        u[r] = tile[(4 * bi + r) * stride + k];
        v[r] = tile[(4 * bj + r) * stride + k];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[r][q] = fmaf(u[r], v[q], acc[r][q]);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int q = 0; q < 4; ++q) total[r][q] += acc[r][q];
  }
  if (bi < 0) return;
  double* g = partials + int64_t(blockIdx.x) * rows * rows;
  for (int r = 0; r < 4; ++r)
    for (int q = 0; q < 4; ++q) {
      const int i = 4 * bi + r, j = 4 * bj + q;
      if (i < rows && j < rows) g[i * rows + j] = g[j * rows + i] = total[r][q];
    }
}

}  // namespace
}  // namespace cuda

void gram_cuda(MatRef x, double* partials, cudaStream_t stream) {
  const int64_t spans = gram_spans(x.rows, x.cols);
  if (spans == 0) return;
  visit_ring(x.dtype, [&](auto r) {
    using R = decltype(r);
    cuda::gram_kernel<R><<<unsigned(spans), cuda::kThreads, 0, stream>>>(static_cast<const R*>(x.data), int(x.rows), x.cols,
                                                                          x.ld, spans, partials);
  });
}

}  // namespace sef
