#include "kernels/gather.h"

#include "kernels/dots.h"

namespace sef {
namespace {

template <class P, class S, class O>
SEF_CLONES void gather_chunk(const P* theta, S* snap, O* out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const S th = load_as<S>(theta[k]);
    out[k] = rounded_update<O>(th, snap[k]);
    snap[k] = th;
  }
}

}  // namespace

void gather_cpu(const VecRef* params, VecRef snapshot, VecRef out, const Chunk* chunks, int64_t n_chunks, int threads) {
  visit_snapshot(snapshot.dtype, [&](auto s) {
    using S = decltype(s);
    visit_ring(out.dtype, [&](auto o) {
      using O = decltype(o);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
      for (int64_t c = 0; c < n_chunks; ++c) {
        const Chunk& ch = chunks[c];
        visit(params[ch.tensor].dtype, [&](auto p) {
          using P = decltype(p);
          gather_chunk(static_cast<const P*>(params[ch.tensor].data) + ch.offset, static_cast<S*>(snapshot.data) + ch.flat,
                       static_cast<O*>(out.data) + ch.flat, ch.length);
        });
      }
    });
  });
}

}  // namespace sef
