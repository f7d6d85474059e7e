#include "kernels/sketch.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/dots.h"

// The adds below are also compiled for AVX-512 (16 lanes halve the instructions
// per element, about 15% faster than AVX2 on one core) and AVX2, picked when
// the library loads; every version gives the same bits.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SEF_SKETCH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SEF_SKETCH_CLONES
#endif

namespace sef {
namespace {

// acc[k] += sign(coord + k) * theta[k] for k < n, a piece of one block (its
// buckets contiguous, so the adds are a loop that vectorises, no scatter). The
// coordinates keep one high word (a block never crosses a multiple of 2^32),
// so sketch_hash reduces to 32-bit lane operations. Each bucket gets one add
// of an exactly converted value: the bits do not depend on the vector width.
// V is the value's type: float holds any 16- or 32-bit parameter exactly,
// double a float64 one; the sign flips its sign bit.
template <class P>
SEF_SKETCH_CLONES void add_signed(const P* __restrict theta, uint32_t n, uint32_t lo, uint32_t key_lo, uint32_t add,
                                  double* __restrict acc) {
  using V = std::conditional_t<std::is_same_v<P, double>, double, float>;
  using U = std::conditional_t<std::is_same_v<P, double>, uint64_t, uint32_t>;
  for (uint32_t k = 0; k < n; ++k) {  // a 32-bit counter: no 64-bit lanes to narrow
    uint32_t x = ((lo + k) ^ key_lo) + add;  // sketch_hash(key, coord + k)
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    V v = load_as<V>(theta[k]);
    U bits;
    std::memcpy(&bits, &v, sizeof v);
    bits ^= U(x & 1u) << (8 * sizeof(U) - 1);
    std::memcpy(&v, &bits, sizeof v);
    acc[k] += double(v);
  }
}

// The run theta[0:n] at coordinates coord.. of a hashed group of m buckets
// (blocks of 2^shift), block by block: each block's piece to its one or two
// contiguous runs of buckets from its offset.
template <class P>
void hash_run(const P* theta, int64_t n, uint64_t key, uint64_t coord, int64_t m, int shift, double* acc) {
  const uint64_t mask = (uint64_t(1) << shift) - 1;
  const uint32_t key_lo = uint32_t(key);
  while (n > 0) {
    const int64_t len = std::min<int64_t>(n, int64_t(mask + 1 - (coord & mask)));
    const uint32_t add = uint32_t(coord >> 32) * 0x9E3779B9u + uint32_t(key >> 32);
    const int64_t j = sketch_block_bucket(key, coord, m, shift);
    const int64_t first = std::min(len, m - j);
    add_signed(theta, uint32_t(first), uint32_t(coord), key_lo, add, acc + j);
    if (first < len) add_signed(theta + first, uint32_t(len - first), uint32_t(coord + uint64_t(first)), key_lo, add, acc);
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
        else hash_run(theta, b - a, uint64_t(sg.key), uint64_t(sg.coord + skip), g.m, sketch_block_shift(g.m), acc);
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
