#include "kernels/step.h"

#include <vector>

#include "kernels/dots.h"

namespace sef {
namespace {

// a (the chunk of the entering row, already rounded to R) stays in cache
// while the ring rows stream past it once each.
template <class P, class S, class R>
inline void step_chunk(const P* theta, S* snap, R* ring, int64_t ld, int64_t rows, int64_t slot, int64_t n, float* a,
                       double* out) {
  for (int64_t k = 0; k < n; ++k) {
    const S th = load_as<S>(theta[k]);
    a[k] = rounded<R>(static_cast<float>(th - snap[k]));
    snap[k] = th;
  }
  slide_rounded(a, ring, ld, rows, slot, n, out);
}

}  // namespace

void step_cpu(const VecRef* params, VecRef snapshot, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n_chunks,
              double* partials, int threads) {
  visit_snapshot(snapshot.dtype, [&](auto s) {
    using S = decltype(s);
    visit_ring(ring.dtype, [&](auto r) {
      using R = decltype(r);
#pragma omp parallel num_threads(threads)
      {
        std::vector<float> a(kChunk);
#pragma omp for schedule(dynamic, 16)
        for (int64_t c = 0; c < n_chunks; ++c) {
          const Chunk& ch = chunks[c];
          visit(params[ch.tensor].dtype, [&](auto p) {
            using P = decltype(p);
            call_best([&]() __attribute__((always_inline)) {
              step_chunk(static_cast<const P*>(params[ch.tensor].data) + ch.offset, static_cast<S*>(snapshot.data) + ch.flat,
                         static_cast<R*>(ring.data) + ch.flat, ring.ld, ring.rows, slot, ch.length, a.data(),
                         partials + c * (ring.rows + 1));
            });
          });
        }
      }
    });
  });
}

}  // namespace sef
