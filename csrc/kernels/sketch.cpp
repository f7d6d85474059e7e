#include "kernels/sketch.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/dots.h"

namespace sef {
namespace {

constexpr int64_t kBlock = 512;  // hashed in one vectorised pass, then added one by one

// acc[bucket(c)] += sign(c) * theta[k] for the run theta[0:n] at coordinates
// coord.. that stay below one multiple of 2^32: the high word of c is then
// constant, so sketch_hash reduces to 32-bit lane operations. Per block,
// the hashes and signed values first (a loop that vectorises), then the
// scattered adds in element order. V is the value's type: float holds any
// 16- or 32-bit parameter exactly, double a float64 one. For m = 2^k the
// bucket (h * m) >> 32 is h >> (32 - k), a cheaper lane operation (Pow2).
template <bool Pow2, class P>
SEF_CLONES void hash_words(const P* theta, int64_t n, uint64_t key, uint64_t coord, int64_t m, double* acc) {
  using V = std::conditional_t<std::is_same_v<P, double>, double, float>;
  const uint32_t lo = uint32_t(coord), key_lo = uint32_t(key);
  const uint32_t add = uint32_t(coord >> 32) * 0x9E3779B9u + uint32_t(key >> 32);
  const int shift = Pow2 ? 32 - __builtin_ctzll(uint64_t(m)) : 0;
  uint32_t idx[kBlock];
  V val[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    const uint32_t start = lo + uint32_t(b);
    for (int64_t k = 0; k < len; ++k) {
      uint32_t x = ((start + uint32_t(k)) ^ key_lo) + add;  // sketch_hash(key, coord + b + k)
      x ^= x >> 16;
      x *= 0x85EBCA6Bu;
      x ^= x >> 13;
      x *= 0xC2B2AE35u;
      x ^= x >> 16;
      const V v = load_as<V>(theta[b + k]);
      idx[k] = Pow2 ? uint32_t(uint64_t(x) >> shift) : sketch_bucket(x, m);
      val[k] = (x & 1u) ? -v : v;
    }
    for (int64_t k = 0; k < len; ++k) acc[idx[k]] += double(val[k]);
  }
}

template <class P>
void hash_run(const P* theta, int64_t n, uint64_t key, uint64_t coord, int64_t m, double* acc) {
  while (n > 0) {  // split where the coordinate's high word changes
    const int64_t len = std::min<int64_t>(n, int64_t((uint64_t(1) << 32) - (coord & 0xFFFFFFFFu)));
    if ((m & (m - 1)) == 0) hash_words<true>(theta, len, key, coord, m, acc);
    else hash_words<false>(theta, len, key, coord, m, acc);
    theta += len, n -= len, coord += uint64_t(len);
  }
}

template <class P>
void identity_run(const P* theta, int64_t n, int64_t coord, double* acc) {
  for (int64_t k = 0; k < n; ++k) acc[coord + k] += to_double(theta[k]);
}

// Elements [lo, hi) of group g (in its local order) into acc[0:m].
void sketch_range(const VecRef* views, const SketchSeg* segs, const SketchGroup& g, int64_t lo, int64_t hi, double* acc) {
  int64_t pos = 0;
  for (int64_t s = g.seg_begin; s < g.seg_end && pos < hi; ++s) {
    const SketchSeg& sg = segs[s];
    const int64_t a = std::max(lo, pos), b = std::min(hi, pos + sg.length);
    if (a < b) {
      const int64_t skip = a - pos;
      visit(views[sg.view].dtype, [&](auto p) {
        using P = decltype(p);
        const P* theta = static_cast<const P*>(views[sg.view].data) + sg.start + skip;
        if (g.identity) identity_run(theta, b - a, sg.coord + skip, acc);
        else hash_run(theta, b - a, uint64_t(sg.key), uint64_t(sg.coord + skip), g.m, acc);
      });
    }
    pos += sg.length;
  }
}

}  // namespace

void sketch_cpu(const VecRef* views, const SketchSeg* segs, const SketchGroup* groups, int64_t n_groups, double* out,
                double* scratch, int threads) {
  // Groups in one part: each its own buckets, groups spread over the threads.
  std::vector<int64_t> whole, split;
  for (int64_t g = 0; g < n_groups; ++g) (groups[g].parts > 1 ? split : whole).push_back(g);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t i = 0; i < int64_t(whole.size()); ++i) {
    const SketchGroup& g = groups[whole[i]];
    double* acc = out + g.out;
    std::fill(acc, acc + g.m, 0.0);
    sketch_range(views, segs, g, 0, g.numel, acc);
  }
  // Large groups: fixed parts (not one per thread), each into its buckets in
  // scratch, then summed in part order.
  for (const int64_t gi : split) {
    const SketchGroup& g = groups[gi];
    const int64_t parts = g.parts, m = g.m;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int64_t p = 0; p < parts; ++p) {
      double* acc = scratch + p * m;
      std::fill(acc, acc + m, 0.0);
      sketch_range(views, segs, g, g.numel * p / parts, g.numel * (p + 1) / parts, acc);
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < m; ++j) {
      double sum = scratch[j];
      for (int64_t p = 1; p < parts; ++p) sum += scratch[p * m + j];
      out[g.out + j] = sum;
    }
  }
}

}  // namespace sef
