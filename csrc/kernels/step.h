// step: gather fused with slide, one pass over memory.
#pragma once

#include "kernels/common.h"

namespace sef {

// Per chunk c: a = round_ring(float(theta - snapshot)), snapshot = theta;
// partials[c, i] = <a, ring[i]> with the ring as it was (so i = slot gives
// a . b with the leaving row), partials[c, rows] = <a, a>; then ring[slot] = a.
// partials is [n_chunks, ring.rows + 1].
void step_cpu(const VecRef* params, VecRef snapshot, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n_chunks,
              double* partials, int threads);

#ifdef SEF_CUDA
// chunks and partials are device pointers; params are the device tensors.
void step_cuda(const VecRef* params, int64_t n_params, VecRef snapshot, MatRef ring, int64_t slot, const Chunk* chunks,
               int64_t n_chunks, double* partials, cudaStream_t stream);
#endif

}  // namespace sef
