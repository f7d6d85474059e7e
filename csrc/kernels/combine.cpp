#include "kernels/combine.h"

#include <algorithm>

#include "kernels/dots.h"

namespace sef {
namespace {

// out[k] = sum_i coeffs[i] * ring[i, k] over one block of n columns.
template <class R>
SEF_CLONES void combine_block(const R* ring, int64_t ld, int64_t rows, const float* coeffs, int64_t n, float* out) {
  std::fill(out, out + n, 0.0f);
  for (int64_t i = 0; i < rows; ++i) {
    const R* row = ring + i * ld;
    const float c = coeffs[i];
    for (int64_t k = 0; k < n; ++k) out[k] += c * to_float(row[k]);
  }
}

}  // namespace

void combine_cpu(MatRef ring, const float* coeffs, float* out, int threads) {
  const int64_t n_blocks = (ring.cols + kChunk - 1) / kChunk;
  visit_ring(ring.dtype, [&](auto r) {
    using R = decltype(r);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t start = b * kChunk;
      combine_block(static_cast<const R*>(ring.data) + start, ring.ld, ring.rows, coeffs, std::min(kChunk, ring.cols - start),
                    out + start);
    }
  });
}

}  // namespace sef
