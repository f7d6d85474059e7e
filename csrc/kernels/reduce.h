// Second stage of every reduction: chunk partials [n, cols] (float64) summed
// per group in a fixed order, so results are bit-identical run to run.
#pragma once

#include "kernels/common.h"

namespace sef {

// out[g, c] = sum of partials[k, c] over the chunks k of group g, in chunk
// order. `chunks` gives each row's group; nullptr puts every row in group 0.
void reduce_partials_cpu(const double* partials, int64_t n, int64_t cols, const Chunk* chunks, int64_t groups, double* out);

#ifdef SEF_CUDA
// Same sums on the device: per (group, column), a fixed strided split over
// 256 threads and a fixed tree. `chunks` is the device copy of the plan.
void reduce_partials_cuda(const double* partials, int64_t n, int64_t cols, const Chunk* chunks, int64_t groups, double* out,
                          cudaStream_t stream);
#endif

}  // namespace sef
