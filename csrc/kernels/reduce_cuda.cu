#include "kernels/cuda_common.cuh"
#include "kernels/reduce.h"

namespace sef {
namespace cuda {
namespace {

// First chunk whose group is >= g (chunks are sorted by group).
__device__ int64_t first_of_group(const Chunk* chunks, int64_t n, int64_t g) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (chunks[mid].group < g) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Block (g, c) sums column c over group g's chunks: thread t takes chunks
// t, t + kThreads, ... in order, then a fixed shared-memory tree.
__global__ void __launch_bounds__(kThreads) reduce_kernel(const double* partials, int64_t n, int64_t cols,
                                                          const Chunk* chunks, double* out) {
  const int64_t g = blockIdx.x, c = blockIdx.y;
  const int64_t lo = chunks ? first_of_group(chunks, n, g) : 0;
  const int64_t hi = chunks ? first_of_group(chunks, n, g + 1) : n;
  double sum = 0.0;
  for (int64_t k = lo + threadIdx.x; k < hi; k += kThreads) sum += partials[k * cols + c];
  __shared__ double tree[kThreads];
  tree[threadIdx.x] = sum;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (int(threadIdx.x) < width) tree[threadIdx.x] += tree[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[g * cols + c] = tree[0];
}

}  // namespace
}  // namespace cuda

void reduce_partials_cuda(const double* partials, int64_t n, int64_t cols, const Chunk* chunks, int64_t groups, double* out,
                          cudaStream_t stream) {
  if (groups == 0 || cols == 0) return;
  cuda::reduce_kernel<<<dim3(unsigned(groups), unsigned(cols)), cuda::kThreads, 0, stream>>>(partials, n, cols, chunks, out);
}

}  // namespace sef
