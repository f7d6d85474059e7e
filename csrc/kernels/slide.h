// slide: append a given row to the ring, returning its inner products.
#pragma once

#include "kernels/common.h"

namespace sef {

// Per chunk c: a = round_ring(row); partials[c, i] = <a, ring[i]> with the
// ring as it was, partials[c, rows] = <a, a>; then ring[slot] = a.
// row may be any of the four value types; partials is [n_chunks, rows + 1].
void slide_cpu(VecRef row, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n_chunks, double* partials, int threads);

#ifdef SEF_CUDA
void slide_cuda(VecRef row, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n_chunks, double* partials,
                cudaStream_t stream);
#endif

}  // namespace sef
