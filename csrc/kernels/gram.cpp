#include "kernels/gram.h"

#include <algorithm>

#include "kernels/dots.h"

namespace sef {
namespace {

// g (w x w) = the Gram of columns [start, stop) of x, tile by tile.
template <class R>
SEF_CLONES void gram_span(const R* x, int64_t ld, int64_t w, int64_t start, int64_t stop, double* g) {
  std::fill(g, g + w * w, 0.0);
  for (; start < stop; start += kChunk) {
    const int64_t n = std::min(kChunk, stop - start);
    for (int64_t i = 0; i < w; ++i)
      for (int64_t j = i; j < w; ++j) g[i * w + j] += dot(x + i * ld + start, x + j * ld + start, n);
  }
  for (int64_t i = 0; i < w; ++i)
    for (int64_t j = 0; j < i; ++j) g[i * w + j] = g[j * w + i];
}

}  // namespace

void gram_cpu(MatRef x, double* partials, int threads) {
  const int64_t spans = gram_spans(x.cols), w = x.rows;
  visit_ring(x.dtype, [&](auto r) {
    using R = decltype(r);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t s = 0; s < spans; ++s)
      gram_span(static_cast<const R*>(x.data), x.ld, w, s * x.cols / spans, (s + 1) * x.cols / spans, partials + s * w * w);
  });
}

}  // namespace sef
