// gram: x x^T for a [W, P] matrix, in float64.
#pragma once

#include "kernels/common.h"

namespace sef {

// The columns are cut into gram_spans(W, P) equal spans; partials[s] is the
// W x W Gram of span s: blocks of rows over cache-sized tiles of columns,
// float32 products summed in 8 float32 lanes per tile (16 with AVX-512), the
// lanes and tiles in float64 (gram.cpp). Summing the span rows in order gives
// x x^T, with bits that do not depend on the thread count. There are at most
// kGramSpans spans, one per kChunk columns, and the partials take at most
// kGramPartialBytes (one W x W Gram when that alone is larger): a large W gets
// fewer, longer spans, not a buffer growing with W^2 times the span count.
constexpr int64_t kGramSpans = 1024;
constexpr int64_t kGramPartialBytes = int64_t(64) << 20;
inline int64_t gram_spans(int64_t rows, int64_t cols) {
  const int64_t tiles = (cols + kChunk - 1) / kChunk;
  const int64_t gram_bytes = rows * rows * int64_t(sizeof(double));
  const int64_t fit = gram_bytes > 0 && kGramPartialBytes / gram_bytes > 0 ? kGramPartialBytes / gram_bytes : 1;
  int64_t spans = tiles < kGramSpans ? tiles : kGramSpans;
  return spans < fit ? spans : fit;
}

// partials is [gram_spans(x.rows, x.cols), x.rows * x.rows].
void gram_cpu(MatRef x, double* partials, int threads);

#ifdef SEF_CUDA
// Rows the CUDA kernel handles (each thread owns a 4 x 4 block of the Gram).
constexpr int64_t kGramMaxRowsCuda = 64;
void gram_cuda(MatRef x, double* partials, cudaStream_t stream);
#endif

}  // namespace sef
