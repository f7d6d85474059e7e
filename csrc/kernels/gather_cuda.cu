#include "kernels/cuda_common.cuh"
#include "kernels/gather.h"

namespace sef {
namespace cuda {
namespace {

template <class S, class O>
__global__ void __launch_bounds__(kThreads) gather_kernel(ParamBatch batch, S* snapshot, O* out, const Chunk* chunks) {
  const Chunk ch = chunks[blockIdx.x];
  const int64_t t = batch_index(batch, ch);
  if (t < 0) return;
  const Span sp(ch.flat, ch.length);
  Owned a;
  visit(batch.dtype[t], [&](auto p) {
    using P = decltype(p);
    take_update<O>(static_cast<const P*>(batch.data[t]) + ch.offset, snapshot + ch.flat, sp, a);
  });
  store_row(out + ch.flat, a, sp);
}

}  // namespace
}  // namespace cuda

void gather_cuda(const VecRef* params, int64_t n_params, VecRef snapshot, VecRef out, const Chunk* chunks,
                 int64_t n_chunks, cudaStream_t stream) {
  if (n_chunks == 0) return;
  visit_snapshot(snapshot.dtype, [&](auto s) {
    using S = decltype(s);
    visit_ring(out.dtype, [&](auto o) {
      using O = decltype(o);
      cuda::for_each_batch(params, n_params, [&](const cuda::ParamBatch& batch) {
        cuda::gather_kernel<S, O><<<unsigned(n_chunks), cuda::kThreads, 0, stream>>>(
            batch, static_cast<S*>(snapshot.data), static_cast<O*>(out.data), chunks);
      });
    });
  });
}

}  // namespace sef
