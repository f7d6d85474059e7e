// project: inner products of a vector with every ring row.
#pragma once

#include "kernels/common.h"

namespace sef {

// partials[c, i] = <vec, ring[i]> over chunk c; vec may be any of the four
// value types (used as float32, not rounded to the ring's type).
// partials is [n_chunks, ring.rows].
void project_cpu(VecRef vec, MatRef ring, const Chunk* chunks, int64_t n_chunks, double* partials, int threads);

#ifdef SEF_CUDA
void project_cuda(VecRef vec, MatRef ring, const Chunk* chunks, int64_t n_chunks, double* partials, cudaStream_t stream);
#endif

}  // namespace sef
