// sketch on the GPU: out += S theta in float64, one block per row of the work
// table that spectral_edge_fast/kernels/sketch.py (sketch_work) builds and
// checks against the views and out; the Triton kernel in triton_ops.py
// mirrors this one. Each thread takes every kThreads-th element of its row: neighbouring
// threads add to neighbouring buckets of the block's run. Atomics from
// different blocks land in any order, so a bucket's last bits vary from run
// to run (docs/numerics.md#sketch-mode).
#include "kernels/cuda_common.cuh"
#include "kernels/sketch.h"

namespace sef {

// A row of the work table: `length` elements of view `view` from `start`, at
// coordinates coord, coord + 1, ..., into the m buckets at `out`; `shift` is
// sketch_block_shift(m), or -1 for an identity group (coordinate = bucket).
struct SketchWork {
  int64_t view, start, length, coord, key, out, m, shift;
};
static_assert(sizeof(SketchWork) == 8 * sizeof(int64_t), "a work row is eight int64 (SKETCH_WORK_COLS)");

namespace cuda {
namespace {

template <class P>
__device__ __forceinline__ void sketch_row(const P* theta, const SketchWork& w, double* out) {
  for (int64_t k = threadIdx.x; k < w.length; k += kThreads) {
    const double x = to_double(theta[k]);
    const uint64_t c = uint64_t(w.coord + k);
    if (w.shift < 0) {
      out[c] += x;  // an identity group's coordinate is in this row only
    } else {
      const double v = (sketch_hash(uint64_t(w.key), c) & 1u) ? -x : x;
      atomicAdd(out + sketch_block_bucket(uint64_t(w.key), c, w.m, int(w.shift)), v);
    }
  }
}

__global__ void __launch_bounds__(kThreads) sketch_kernel(ParamBatch batch, const SketchWork* work, double* out) {
  const SketchWork w = work[blockIdx.x];
  const int64_t t = w.view - batch.first;
  if (t < 0 || t >= batch.count) return;  // another launch's view
  visit(batch.dtype[t], [&](auto p) {
    using P = decltype(p);
    sketch_row(static_cast<const P*>(batch.data[t]) + w.start, w, out + w.out);
  });
}

}  // namespace
}  // namespace cuda

void sketch_cuda(const VecRef* views, int64_t n_views, const int64_t* work, int64_t n_rows, double* out,
                 cudaStream_t stream) {
  if (n_rows == 0) return;
  cuda::for_each_batch(views, n_views, [&](const cuda::ParamBatch& batch) {
    cuda::sketch_kernel<<<unsigned(n_rows), cuda::kThreads, 0, stream>>>(
        batch, reinterpret_cast<const SketchWork*>(work), out);
  });
}

}  // namespace sef
