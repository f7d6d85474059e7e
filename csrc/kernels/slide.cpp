#include "kernels/slide.h"

#include <vector>

#include "kernels/dots.h"

namespace sef {
namespace {

template <class V, class R>
inline void slide_chunk(const V* row, R* ring, int64_t ld, int64_t rows, int64_t slot, int64_t n, float* a, double* out) {
  for (int64_t k = 0; k < n; ++k) a[k] = rounded<R>(to_float(row[k]));
  slide_rounded(a, ring, ld, rows, slot, n, out);
}

}  // namespace

void slide_cpu(VecRef row, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n_chunks, double* partials, int threads) {
  visit(row.dtype, [&](auto v) {
    using V = decltype(v);
    visit_ring(ring.dtype, [&](auto r) {
      using R = decltype(r);
#pragma omp parallel num_threads(threads)
      {
        std::vector<float> a(kChunk);
#pragma omp for schedule(dynamic, 16)
        for (int64_t c = 0; c < n_chunks; ++c) {
          const Chunk& ch = chunks[c];
          call_best([&]() __attribute__((always_inline)) {
            slide_chunk(static_cast<const V*>(row.data) + ch.flat, static_cast<R*>(ring.data) + ch.flat, ring.ld, ring.rows,
                        slot, ch.length, a.data(), partials + c * (ring.rows + 1));
          });
        }
      }
    });
  });
}

}  // namespace sef
