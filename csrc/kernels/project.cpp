#include "kernels/project.h"

#include "kernels/dots.h"

namespace sef {
namespace {

template <class V, class R>
SEF_CLONES void project_chunk(const V* vec, const R* ring, int64_t ld, int64_t rows, int64_t n, double* out) {
  for (int64_t i = 0; i < rows; ++i) out[i] = dot(vec, ring + i * ld, n);
}

}  // namespace

void project_cpu(VecRef vec, MatRef ring, const Chunk* chunks, int64_t n_chunks, double* partials, int threads) {
  visit(vec.dtype, [&](auto v) {
    using V = decltype(v);
    visit_ring(ring.dtype, [&](auto r) {
      using R = decltype(r);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
      for (int64_t c = 0; c < n_chunks; ++c) {
        const Chunk& ch = chunks[c];
        project_chunk(static_cast<const V*>(vec.data) + ch.flat, static_cast<const R*>(ring.data) + ch.flat, ring.ld,
                      ring.rows, ch.length, partials + c * ring.rows);
      }
    });
  });
}

}  // namespace sef
