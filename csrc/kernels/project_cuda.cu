#include "kernels/cuda_common.cuh"
#include "kernels/project.h"

namespace sef {
namespace cuda {
namespace {

template <class V, class R>
__global__ void __launch_bounds__(kThreads) project_kernel(const V* vec, const R* ring, int64_t ld, int rows,
                                                           const Chunk* chunks, double* partials) {
  const Chunk ch = chunks[blockIdx.x];
  const Span sp(ch.flat, ch.length);
  Owned a;
  take_row<float>(vec + ch.flat, sp, a);
  __shared__ RowSums sums;
  dot_rows(a, sp, ring + ch.flat, ld, rows, sums);
  write_partials(sums, rows, partials + int64_t(blockIdx.x) * rows);
}

}  // namespace
}  // namespace cuda

void project_cuda(VecRef vec, MatRef ring, const Chunk* chunks, int64_t n_chunks, double* partials, cudaStream_t stream) {
  if (n_chunks == 0) return;
  visit(vec.dtype, [&](auto v) {
    using V = decltype(v);
    visit_ring(ring.dtype, [&](auto r) {
      using R = decltype(r);
      cuda::project_kernel<V, R><<<unsigned(n_chunks), cuda::kThreads, 0, stream>>>(
          static_cast<const V*>(vec.data), static_cast<const R*>(ring.data), ring.ld, int(ring.rows), chunks, partials);
    });
  });
}

}  // namespace sef
