#include "kernels/cuda_common.cuh"
#include "kernels/gram.h"

namespace sef {
namespace cuda {
namespace {

// Floats of x staged in shared memory at a time: rows padded to a multiple of
// 4, each row of the tile padded by one float against bank conflicts.
constexpr int kGramTile = 8192;

// Block s computes the Gram of span s. The Gram's 4 x 4 blocks (bi <= bj)
// are its "pairs"; thread t works on pair t % pairs over the tile's columns
// k = t / pairs, t / pairs + splits, ... (splits = kThreads / pairs), so a
// small W keeps every thread busy instead of one thread per pair. Float32
// sums over a thread's columns of a tile, float64 across tiles, then the
// splits' sums added in split order: bits that do not depend on scheduling.
template <class R>
__global__ void __launch_bounds__(kThreads) gram_kernel(const R* x, int rows, int64_t cols, int64_t ld, int64_t spans,
                                                        double* partials) {
  // The tile, and at the end the splits' float64 sums (kThreads x 16 doubles).
  __shared__ __align__(16) float tile[kGramTile + kGramMaxRowsCuda];
  static_assert(kThreads * 16 * sizeof(double) <= sizeof(float) * (kGramTile + kGramMaxRowsCuda), "room for the sums");
  const int padded = (rows + 3) & ~3, blocks = padded / 4, width = kGramTile / padded, stride = width + 1;
  const int pairs = blocks * (blocks + 1) / 2, splits = kThreads / pairs;
  const int pair = threadIdx.x % pairs, split = threadIdx.x / pairs;
  const bool active = split < splits;
  int bi = 0, bj = 0;
  for (int b = pair, i = 0; i < blocks; b -= blocks - i, ++i)
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
    if (!active) continue;
    float acc[4][4] = {};
    for (int k = split; k < n; k += splits) {
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
  __syncthreads();  // the tile is free: it holds the splits' sums now
  double* sums = reinterpret_cast<double*>(tile);
  if (active)
    for (int e = 0; e < 16; ++e) sums[(split * pairs + pair) * 16 + e] = total[e / 4][e % 4];
  __syncthreads();
  if (!active || split != 0) return;
  double* g = partials + int64_t(blockIdx.x) * rows * rows;
  for (int r = 0; r < 4; ++r)
    for (int q = 0; q < 4; ++q) {
      double sum = 0.0;
      for (int t = 0; t < splits; ++t) sum += sums[(t * pairs + pair) * 16 + 4 * r + q];
      const int i = 4 * bi + r, j = 4 * bj + q;
      if (i < rows && j < rows) g[i * rows + j] = g[j * rows + i] = sum;
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
