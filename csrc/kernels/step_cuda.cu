#include "kernels/cuda_common.cuh"
#include "kernels/step.h"

namespace sef {
namespace cuda {
namespace {

// One block per chunk: read theta and the snapshot once, stream every ring row
// once (ring[slot] included, before it is overwritten), write the snapshot and
// ring[slot] once.
template <class S, class R>
__global__ void __launch_bounds__(kThreads) step_kernel(ParamBatch batch, S* snapshot, R* ring, int64_t ld, int rows,
                                                        int64_t slot, const Chunk* chunks, double* partials) {
  const Chunk ch = chunks[blockIdx.x];
  const int64_t t = batch_index(batch, ch);
  if (t < 0) return;
  const Span sp(ch.flat, ch.length);
  Owned a;
  visit(batch.dtype[t], [&](auto p) {
    using P = decltype(p);
    take_update<R>(static_cast<const P*>(batch.data[t]) + ch.offset, snapshot + ch.flat, sp, a);
  });
  __shared__ RowSums sums;
  slide_rounded(a, sp, ring + ch.flat, ld, rows, slot, sums, partials + int64_t(blockIdx.x) * (rows + 1));
}

}  // namespace
}  // namespace cuda

void step_cuda(const VecRef* params, int64_t n_params, VecRef snapshot, MatRef ring, int64_t slot, const Chunk* chunks,
               int64_t n_chunks, double* partials, cudaStream_t stream) {
  if (n_chunks == 0) return;
  visit_snapshot(snapshot.dtype, [&](auto s) {
    using S = decltype(s);
    visit_ring(ring.dtype, [&](auto r) {
      using R = decltype(r);
      cuda::for_each_batch(params, n_params, [&](const cuda::ParamBatch& batch) {
        cuda::step_kernel<S, R><<<unsigned(n_chunks), cuda::kThreads, 0, stream>>>(
            batch, static_cast<S*>(snapshot.data), static_cast<R*>(ring.data), ring.ld, int(ring.rows), slot, chunks,
            partials);
      });
    });
  });
}

}  // namespace sef
