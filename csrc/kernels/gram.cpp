#include "kernels/gram.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/dots.h"

#if SEF_X86
#include <immintrin.h>
#endif

namespace sef {
namespace {

// The Gram is computed in blocks of kBlock x kBlock rows: each block's
// kBlock^2 products per column come from 2 * kBlock row loads, and its
// accumulators (9 vectors of 8 lanes) stay in registers over a tile of columns.
constexpr int64_t kBlock = 3;
constexpr int64_t kLanesGram = 8;

// Columns per tile: the tile's W rows (float32) fit half of a 1 MiB L2, so
// every block after the first reads them from cache. Column k of a tile is
// summed in float32 in lane k % 8, so the lane sums hold at most
// kMaxTile / 8 products before they are added in float64.
constexpr int64_t kTileBytes = 512 << 10, kMinTile = 128, kMaxTile = 2048;
int64_t tile_cols(int64_t w) {
  int64_t t = kMaxTile;
  while (t > kMinTile && t * w * int64_t(sizeof(float)) > kTileBytes) t /= 2;
  return t;
}

// The blocks fill i <= j (and the diagonal blocks' lower halves): copy the
// upper triangle onto the lower one.
void mirror_upper(double* g, int64_t w) {
  for (int64_t i = 0; i < w; ++i)
    for (int64_t j = 0; j < i; ++j) g[i * w + j] = g[j * w + i];
}

// Tile columns [start, start + n) of x as float32 rows `ld` apart: x itself for
// float32 (no copy), else converted into `buf` (rows kMaxTile apart).
// The last n % 8 columns are always copied to `tail` (rows 8 apart, zero
// padded), so the block kernels only see whole vectors.
struct Tile {
  const float* body;
  int64_t ld, n8;
  const float* tail;
};

void bf16_rows_to_float(const bf16* x, int64_t ld, int64_t w, int64_t n, float* out, int64_t out_ld) {
  for (int64_t i = 0; i < w; ++i)
    for (int64_t k = 0; k < n; ++k) out[i * out_ld + k] = to_float(x[i * ld + k]);
}

#if SEF_X86
// bf16 -> float32 is a 16-bit shift of the bits.
SEF_AVX2_FMA void bf16_rows_to_float_avx2(const bf16* x, int64_t ld, int64_t w, int64_t n, float* out, int64_t out_ld) {
  const int64_t n8 = n & ~int64_t(7);
  for (int64_t i = 0; i < w; ++i) {
    const bf16* src = x + i * ld;
    float* dst = out + i * out_ld;
    for (int64_t k = 0; k < n8; k += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
      _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (int64_t k = n8; k < n; ++k) dst[k] = to_float(src[k]);
  }
}
#endif

template <class R>
Tile load_tile(const R* x, int64_t ld, int64_t w, int64_t n, float* buf, float* tail, bool avx2) {
  const int64_t n8 = n & ~int64_t(7);
  Tile t{nullptr, ld, n8, tail};
  if constexpr (std::is_same_v<R, float>) {
    t.body = x;
  } else {
#if SEF_X86
    if (avx2) bf16_rows_to_float_avx2(x, ld, w, n8, buf, kMaxTile);
    else
#endif
      bf16_rows_to_float(x, ld, w, n8, buf, kMaxTile);
    (void)avx2;
    t.body = buf;
    t.ld = kMaxTile;
  }
  std::fill(tail, tail + w * kLanesGram, 0.0f);
  for (int64_t i = 0; i < w; ++i)
    for (int64_t k = n8; k < n; ++k) tail[i * kLanesGram + k - n8] = to_float(x[i * ld + k]);
  return t;
}

// g[i * w + j] += sum over n8 columns of a[i] * b[j], for the mr x nr block
// whose rows start at a and b; 8 float32 lane sums, added in float64. Plain
// C++ for CPUs without AVX2 + FMA (every other one takes block_avx2).
// DIAG: a diagonal block (a == b, MR == NR): only the products i <= j, its g
// entries i > j left alone (mirror_upper writes them).
template <int MR, int NR, bool DIAG = false>
void block_generic(const float* a, const float* b, int64_t ld, int64_t n8, double* g, int64_t w) {
  float acc[MR][NR][kLanesGram] = {};
  for (int64_t k = 0; k < n8; k += kLanesGram)
    for (int i = 0; i < MR; ++i)
      for (int j = DIAG ? i : 0; j < NR; ++j)
        for (int l = 0; l < kLanesGram; ++l) acc[i][j][l] += a[i * ld + k + l] * b[j * ld + k + l];
  for (int i = 0; i < MR; ++i)
    for (int j = DIAG ? i : 0; j < NR; ++j) {
      double s = 0.0;
      for (int l = 0; l < kLanesGram; ++l) s += acc[i][j][l];
      g[i * w + j] += s;
    }
}

#if SEF_X86
// The same sums with fused multiply-adds (so its bits differ from
// block_generic's; a machine always takes the same one).
template <int MR, int NR, bool DIAG = false>
SEF_AVX2_FMA void block_avx2(const float* a, const float* b, int64_t ld, int64_t n8, double* g, int64_t w) {
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < n8; k += kLanesGram) {
    __m256 bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = _mm256_loadu_ps(b + j * ld + k);
    for (int i = 0; i < MR; ++i) {
      const __m256 av = DIAG ? bv[i] : _mm256_loadu_ps(a + i * ld + k);
      for (int j = DIAG ? i : 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = DIAG ? i : 0; j < NR; ++j) {
      // lanes l and l + 4, then the four pairs in order, all in float64
      const __m256d s = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(acc[i][j])),
                                      _mm256_cvtps_pd(_mm256_extractf128_ps(acc[i][j], 1)));
      alignas(32) double d[4];
      _mm256_store_pd(d, s);
      g[i * w + j] += ((d[0] + d[1]) + d[2]) + d[3];
    }
}
#endif

#if SEF_X86
// With AVX-512 (32 registers), blocks of 4 x 4 rows: 16 accumulators of 16
// lanes and 5 loads. float32: one fused multiply-add per column, column k of a
// tile in lane k % 16. bf16: bf16 x bf16 products are exact in float32, and
// vdpbf16ps adds two of them per lane and instruction (columns 32 q + 2 l and
// 32 q + 2 l + 1, in that order), twice the products of an FMA; it treats
// inputs and sums below float32's normal range (1.2e-38) as zero.
constexpr int64_t kBlock512 = 4;
template <class T>
constexpr int64_t kCols512 = 64 / sizeof(T);

// Rows of the next tile a block brings into L2 while it computes, one line per
// row and step: the blocks of a tile share out its rows, so the tile after it
// streams in from DRAM during the whole tile's work, not only its first block.
template <class T>
struct Prefetch {
  const T* x;
  int64_t ld, rows;
};

// DIAG: a diagonal block (a == b, MR == NR), whose products i > j mirror
// products i < j and are skipped (a W = 16 Gram takes 136 products per column,
// not 160); its g entries i > j are left alone.
template <class T, int MR, int NR, bool DIAG = false>
SEF_AVX512 void block_avx512(const T* a, const T* b, int64_t ld, int64_t n, double* g, int64_t w, Prefetch<T> pf) {
  static_assert(!DIAG || MR == NR, "a diagonal block is square");
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += kCols512<T>) {
    __m512i bv[NR];
    for (int64_t r = 0; r < pf.rows; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf.x + r * pf.ld + k), _MM_HINT_T1);
    for (int j = 0; j < NR; ++j) bv[j] = _mm512_loadu_si512(b + j * ld + k);
    for (int i = 0; i < MR; ++i) {
      const __m512i av = DIAG ? bv[i] : _mm512_loadu_si512(a + i * ld + k);
      for (int j = DIAG ? i : 0; j < NR; ++j) {
        if constexpr (std::is_same_v<T, bf16>) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)bv[j]);
        else acc[i][j] = _mm512_fmadd_ps(_mm512_castsi512_ps(av), _mm512_castsi512_ps(bv[j]), acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = DIAG ? i : 0; j < NR; ++j) {
      // the maskz forms: the plain ones trip gcc 12's -Wuninitialized in its own header
      const __m512d v = _mm512_castps_pd(acc[i][j]);
      const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, v, 0));
      const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xff, v, 1));
      const __m512d s = _mm512_add_pd(_mm512_maskz_cvtps_pd(0xff, lo), _mm512_maskz_cvtps_pd(0xff, hi));
      alignas(64) double d[8];
      _mm512_store_pd(d, s);
      g[i * w + j] += ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
    }
}
#endif

using BlockFn = void (*)(const float*, const float*, int64_t, int64_t, double*, int64_t);

#define SEF_BLOCK_TABLE(fn)                                                                       \
  {                                                                                               \
    {fn<1, 1>, fn<1, 2>, fn<1, 3>}, {fn<2, 1>, fn<2, 2>, fn<2, 3>}, { fn<3, 1>, fn<3, 2>, fn<3, 3> } \
  }
#define SEF_DIAG_TABLE(fn) \
  { fn<1, 1, true>, fn<2, 2, true>, fn<3, 3, true> }

// A path's block kernels: table[mr - 1][nr - 1], and diag[m - 1] for the diagonal blocks.
struct Blocks {
  const BlockFn (*table)[kBlock];
  const BlockFn* diag;
};

// Row blocks I (of `block` rows) of band b out of `bands`: I = b, b + bands, ...
// (round robin, so the bands of the triangle get about the same work).
struct Band {
  int64_t b, bands;
};

// All blocks I <= J, I in band `band`, of one part of a tile (columns rows `ld` apart, n8 of them).
void tile_blocks(const float* x, int64_t ld, int64_t n8, int64_t w, double* g, Blocks fns, Band band) {
  if (n8 == 0) return;
  for (int64_t i = band.b * kBlock; i < w; i += band.bands * kBlock) {
    const int64_t mr = std::min(kBlock, w - i);
    fns.diag[mr - 1](x + i * ld, x + i * ld, ld, n8, g + i * w + i, w);
    for (int64_t j = i + kBlock; j < w; j += kBlock)
      fns.table[mr - 1][std::min(kBlock, w - j) - 1](x + i * ld, x + j * ld, ld, n8, g + i * w + j, w);
  }
}

#if SEF_X86
// gram_span on a CPU with AVX-512 (and AVX512-BF16 for bf16): x read in
// place, the last n % kCols512 columns of a tile from `tail` (rows kCols512
// apart, zero padded).
template <class T>
void gram_span_avx512(const T* x, int64_t ld, int64_t w, int64_t start, int64_t stop, double* g, T* tail, Band band) {
  using Fn = void (*)(const T*, const T*, int64_t, int64_t, double*, int64_t, Prefetch<T>);
#define SEF_ROW(m) {block_avx512<T, m, 1>, block_avx512<T, m, 2>, block_avx512<T, m, 3>, block_avx512<T, m, 4>}
  static const Fn table[kBlock512][kBlock512] = {SEF_ROW(1), SEF_ROW(2), SEF_ROW(3), SEF_ROW(4)};
#undef SEF_ROW
  static const Fn diag[kBlock512] = {block_avx512<T, 1, 1, true>, block_avx512<T, 2, 2, true>, block_avx512<T, 3, 3, true>,
                                     block_avx512<T, 4, 4, true>};
  constexpr int64_t step = kCols512<T>;
  int64_t count = 0;  // blocks of the band
  for (int64_t i = band.b * kBlock512; i < w; i += band.bands * kBlock512) count += (w - i + kBlock512 - 1) / kBlock512;
  // next: the next tile's columns of row 0 (nullptr: none); block q prefetches rows q, q + count, ...
  const auto blocks = [&](const T* rows, int64_t row_ld, int64_t n, const T* next) {
    int64_t q = 0;
    const auto pf = [&]() {
      const int64_t r = q++;
      return Prefetch<T>{next ? next + r * row_ld : nullptr, count * row_ld, next && r < w ? (w - r + count - 1) / count : 0};
    };
    for (int64_t i = band.b * kBlock512; i < w; i += band.bands * kBlock512) {
      const int64_t mr = std::min(kBlock512, w - i);
      diag[mr - 1](rows + i * row_ld, rows + i * row_ld, row_ld, n, g + i * w + i, w, pf());
      for (int64_t j = i + kBlock512; j < w; j += kBlock512)
        table[mr - 1][std::min(kBlock512, w - j) - 1](rows + i * row_ld, rows + j * row_ld, row_ld, n, g + i * w + j, w, pf());
    }
  };
  const int64_t cols = tile_cols(w);
  for (; start < stop; start += cols) {
    const int64_t n = std::min(cols, stop - start), body = n / step * step;
    if (body > 0) blocks(x + start, ld, body, start + n < stop ? x + start + n : nullptr);
    if (body < n) {
      std::fill(tail, tail + w * step, T{0});
      for (int64_t i = 0; i < w; ++i) std::copy(x + i * ld + start + body, x + i * ld + start + n, tail + i * step);
      blocks(tail, step, step, nullptr);
    }
  }
}
#endif

// g (w x w) += the blocks of `band` of the Gram of columns [start, stop) of x, tile by tile.
template <class R>
void gram_span(const R* x, int64_t ld, int64_t w, int64_t start, int64_t stop, double* g, float* buf, float* tail,
               bool avx2, Band band) {
  static const BlockFn generic[kBlock][kBlock] = SEF_BLOCK_TABLE(block_generic);
  static const BlockFn generic_diag[kBlock] = SEF_DIAG_TABLE(block_generic);
#if SEF_X86
  static const BlockFn fused[kBlock][kBlock] = SEF_BLOCK_TABLE(block_avx2);
  static const BlockFn fused_diag[kBlock] = SEF_DIAG_TABLE(block_avx2);
  const Blocks fns = avx2 ? Blocks{fused, fused_diag} : Blocks{generic, generic_diag};
#else
  const Blocks fns{generic, generic_diag};
#endif
  const int64_t cols = tile_cols(w);
  for (; start < stop; start += cols) {
    const int64_t n = std::min(cols, stop - start);
    const Tile t = load_tile(x + start, ld, w, n, buf, tail, avx2);
    tile_blocks(t.body, t.ld, t.n8, w, g, fns, band);
    if (t.n8 < n) tile_blocks(t.tail, kLanesGram, kLanesGram, w, g, fns, band);
  }
}

}  // namespace

// Products (W (W + 1) / 2 per column) per thread below which another thread
// costs more than it saves: about 5 ms of one core's work, while waking a
// thread whose core is busy takes a scheduler slice (8-30 ms on a loaded
// 2-core machine, against 0.1-3 ms for a W <= 16, P = 1e6 Gram on one core).
constexpr int64_t kGrain = int64_t(1) << 27;
// Bytes read per thread below which a small W (memory-bound: few products a
// column) keeps one thread: 16 MB is about 1 ms of one core's stream, while two
// threads reach the machine's bandwidth, which one core alone does not.
constexpr int64_t kByteGrain = int64_t(1) << 24;

// Work units (span, band): when the spans are fewer than the threads (a large
// W, whose partials are bounded), each span's row blocks are shared out in
// bands. Each g row belongs to one band, and every product is summed in the
// same order whatever the split, so the bits do not depend on it.
void gram_cpu(MatRef x, double* partials, int threads) {
  const int64_t w = x.rows, spans = gram_spans(w, x.cols);
  const int64_t bytes = w * x.cols * (x.dtype == DType::BF16 ? 2 : 4);
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, std::max(w * (w + 1) / 2 * x.cols / kGrain,
                                                                          bytes / kByteGrain))));
  const bool avx2 = has_avx2_fma();
#if SEF_X86
  const bool avx512 = x.dtype == DType::BF16 ? has_avx512_bf16() : has_avx512();
  const int64_t block = avx512 ? kBlock512 : kBlock;
#else
  const bool avx512 = false;
  const int64_t block = kBlock;
#endif
  const int64_t row_blocks = (w + block - 1) / block;
  const int64_t bands = std::clamp<int64_t>((threads + spans - 1) / std::max<int64_t>(spans, 1), 1, std::max<int64_t>(row_blocks, 1));
  visit_ring(x.dtype, [&](auto r) {
    using R = decltype(r);
    const R* data = static_cast<const R*>(x.data);
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> buf(avx512 || std::is_same_v<R, float> ? 0 : w * kMaxTile), tail(w * kLanesGram);
#if SEF_X86
      std::vector<R> tail512(avx512 ? w * kCols512<R> : 0);
#endif
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < spans * bands; ++u) {
        const int64_t s = u / bands, start = s * x.cols / spans, stop = (s + 1) * x.cols / spans;
        const Band band{u % bands, bands};
        double* g = partials + s * w * w;
        for (int64_t i = band.b * block; i < w; i += bands * block) std::fill(g + i * w, g + std::min(w, i + block) * w, 0.0);
#if SEF_X86
        if (avx512) {
          gram_span_avx512(data, x.ld, w, start, stop, g, tail512.data(), band);
          continue;
        }
#endif
        gram_span(data, x.ld, w, start, stop, g, buf.data(), tail.data(), avx2, band);
      }
#pragma omp for schedule(static)
      for (int64_t s = 0; s < spans; ++s) mirror_upper(partials + s * w * w, w);
    }
  });
}

}  // namespace sef
