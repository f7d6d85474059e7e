// gram: x x^T for a [W, P] matrix, in float64.
#pragma once

#include "kernels/common.h"

namespace sef {

// The columns are cut into gram_spans(P) equal spans; partials[s] is the W x W
// Gram of span s (float32 products over tiles of at most kChunk columns, tile
// sums in float64). Summing the span rows in order gives x x^T.
constexpr int64_t kGramSpans = 1024;
inline int64_t gram_spans(int64_t cols) {
  const int64_t tiles = (cols + kChunk - 1) / kChunk;
  return tiles < kGramSpans ? tiles : kGramSpans;
}

// partials is [gram_spans(x.cols), x.rows * x.rows].
void gram_cpu(MatRef x, double* partials, int threads);

#ifdef SEF_CUDA
// Rows the CUDA kernel handles (each thread owns a 4 x 4 block of the Gram).
constexpr int64_t kGramMaxRowsCuda = 64;
void gram_cuda(MatRef x, double* partials, cudaStream_t stream);
#endif

}  // namespace sef
