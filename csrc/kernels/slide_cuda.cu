#include "kernels/cuda_common.cuh"
#include "kernels/slide.h"

namespace sef {
namespace cuda {
namespace {

template <class V, class R>
__global__ void __launch_bounds__(kThreads) slide_kernel(const V* row, R* ring, int64_t ld, int rows, int64_t slot,
                                                         const Chunk* chunks, double* partials) {
  const Chunk ch = chunks[blockIdx.x];
  const Span sp(ch.flat, ch.length);
  Owned a;
  take_row<R>(row + ch.flat, sp, a);
  __shared__ RowSums sums;
  slide_rounded(a, sp, ring + ch.flat, ld, rows, slot, sums, partials + int64_t(blockIdx.x) * (rows + 1));
}

}  // namespace
}  // namespace cuda

void slide_cuda(VecRef row, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n_chunks, double* partials,
                cudaStream_t stream) {
  if (n_chunks == 0) return;
  visit(row.dtype, [&](auto v) {
    using V = decltype(v);
    visit_ring(ring.dtype, [&](auto r) {
      using R = decltype(r);
      cuda::slide_kernel<V, R><<<unsigned(n_chunks), cuda::kThreads, 0, stream>>>(
          static_cast<const V*>(row.data), static_cast<R*>(ring.data), ring.ld, int(ring.rows), slot, chunks, partials);
    });
  });
}

}  // namespace sef
