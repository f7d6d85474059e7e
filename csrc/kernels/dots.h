// Float32 dot products for the C++ kernels. kLanes independent accumulators
// let gcc vectorise without reassociating (no -ffast-math), and element k
// always lands in lane k % kLanes, so the bits do not depend on alignment,
// vector width or thread count.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/common.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

// The per-chunk loops of the other kernels are also compiled for AVX2 and
// picked when the library loads (GCC function multiversioning). The AVX2
// target has no FMA, so no multiply-add is fused and both versions give the
// same bits. step and slide pick theirs through has_avx2() (call_best).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SEF_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SEF_CLONES
#endif

// Hand-vectorised AVX2 + FMA kernels (x86-64 only), taken when the CPU has both.
#if defined(__GNUC__) && defined(__x86_64__)
#define SEF_X86 1
#define SEF_AVX2 __attribute__((target("avx2")))
#define SEF_AVX2_FMA __attribute__((target("avx2,fma")))
#define SEF_AVX512 __attribute__((target("avx512f,avx512bf16")))
#else
#define SEF_X86 0
#endif

namespace sef {

constexpr int kLanes = 16;

// The instruction set the hand-written paths may use: 2 = AVX-512, 1 = AVX2
// (+FMA), 0 = plain C++. The best the CPU has, capped (never raised) by the
// environment variable SEF_CPU_ISA=avx512|avx2|scalar, read once at first use
// so that every path can be tested on one machine. An unknown value is ignored
// with a one-line warning. The compiler's AVX2 clones of combine, gather and
// project (SEF_CLONES) are chosen by the loader and not capped; they give the
// plain version's bits.
inline int isa_cap() {
  static const int cap = [] {
    const char* v = std::getenv("SEF_CPU_ISA");
    if (v == nullptr || *v == '\0') return 2;
    if (std::strcmp(v, "avx512") == 0) return 2;
    if (std::strcmp(v, "avx2") == 0) return 1;
    if (std::strcmp(v, "scalar") == 0) return 0;
    std::fprintf(stderr, "spectral_edge_fast: ignoring SEF_CPU_ISA=%s (expected avx512, avx2 or scalar)\n", v);
    return 2;
  }();
  return cap;
}

inline bool has_avx2() {
#if SEF_X86
  static const bool has = isa_cap() >= 1 && __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

inline bool has_avx2_fma() {
#if SEF_X86
  static const bool has = isa_cap() >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

inline bool has_avx512() {
#if SEF_X86
  static const bool has = isa_cap() >= 2 && __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

inline bool has_avx512_bf16() {
#if SEF_X86
  static const bool has = isa_cap() >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

#if SEF_X86
template <class F>
SEF_AVX2 void call_avx2(const F& f) {
  f();
}
#endif

// f(), an always_inline lambda, compiled for AVX2 where has_avx2() and for the
// baseline otherwise: the loops inlined into it vectorise for that target, and
// SEF_CPU_ISA=scalar runs what a CPU without AVX2 runs.
template <class F>
inline void call_best(const F& f) {
#if SEF_X86
  if (has_avx2()) return call_avx2(f);
#endif
  f();
}

// The hand-written paths taken, e.g. "avx512+bf16": the Gram kernel's for
// fp32 (avx512, avx2 or scalar), "+bf16" when bf16 inputs use AVX512-BF16.
inline const char* cpu_isa() {
  if (has_avx512()) return has_avx512_bf16() ? "avx512+bf16" : "avx512";
  return has_avx2_fma() ? "avx2" : "scalar";
}

// to_bf16 without a branch (the same bits), so the loops over it vectorise.
inline bf16 to_bf16_vec(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return bf16{uint16_t((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded)};
}

// x rounded to the ring type R, as a float: to_float(round_to<R>(x)).
template <class R>
inline float rounded(float x) {
  if constexpr (std::is_same_v<R, bf16>) return bits_to_float(uint32_t(to_bf16_vec(x).bits) << 16);
  else return x;
}

// x, already a value of R, stored as R: for bf16 the top 16 bits, no rounding.
template <class R>
inline R narrow_exact(float x) {
  if constexpr (std::is_same_v<R, bf16>) return bf16{uint16_t(float_to_bits(x) >> 16)};
  else return x;
}

template <class A, class B>
inline double dot(const A* a, const B* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += to_float(a[k + l]) * to_float(b[k + l]);
  for (int l = 0; k + l < n; ++l) acc[l] += to_float(a[k + l]) * to_float(b[k + l]);
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  return sum;
}

#if SEF_X86
// out[m] = dot(a, rows[m]) for M bf16 rows `ld` apart, by hand: the rows share
// the loads of a, and bf16 -> float is a 16-bit shift. The same lanes,
// unfused products and sums as dot() (no FMA in this target), so the same bits.
template <int M>
SEF_AVX2 void dots_bf16_avx2(const float* a, const bf16* rows, int64_t ld, int64_t n, double* out) {
  static_assert(kLanes == 16, "two vectors of 8 lanes");
  __m256 lo[M], hi[M];
  for (int m = 0; m < M; ++m) lo[m] = hi[m] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    const __m256 a0 = _mm256_loadu_ps(a + k), a1 = _mm256_loadu_ps(a + k + 8);
    for (int m = 0; m < M; ++m) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + m * ld + k));
      const __m256 b0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(b)), 16));
      const __m256 b1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(b, 1)), 16));
      lo[m] = _mm256_add_ps(lo[m], _mm256_mul_ps(a0, b0));
      hi[m] = _mm256_add_ps(hi[m], _mm256_mul_ps(a1, b1));
    }
  }
  for (int m = 0; m < M; ++m) {
    float acc[kLanes];
    _mm256_storeu_ps(acc, lo[m]);
    _mm256_storeu_ps(acc + 8, hi[m]);
    for (int l = 0; k + l < n; ++l) acc[l] += a[k + l] * to_float(rows[m * ld + k + l]);
    double sum = 0.0;
    for (int l = 0; l < kLanes; ++l) sum += acc[l];
    out[m] = sum;
  }
}
#endif

// out[i] = <a, rows[i]> over n elements for each of `rows` rows `ld` apart.
template <class R>
inline void dot_rows(const float* a, const R* rows_base, int64_t ld, int64_t rows, int64_t n, double* out) {
#if SEF_X86
  if constexpr (std::is_same_v<R, bf16>) {
    if (has_avx2()) {
      int64_t i = 0;
      for (; i + 4 <= rows; i += 4) dots_bf16_avx2<4>(a, rows_base + i * ld, ld, n, out + i);
      for (; i < rows; ++i) dots_bf16_avx2<1>(a, rows_base + i * ld, ld, n, out + i);
      return;
    }
  }
#endif
  for (int64_t i = 0; i < rows; ++i) out[i] = dot(a, rows_base + i * ld, n);
}

// The slide proper, for one chunk of the entering row a (already rounded to
// R): out[i] = <a, ring[i]> (ring[slot] read before it is overwritten),
// out[rows] = <a, a>, then ring[slot] = a.
template <class R>
inline void slide_rounded(const float* a, R* ring, int64_t ld, int64_t rows, int64_t slot, int64_t n, double* out) {
  dot_rows(a, ring, ld, rows, n, out);
  out[rows] = dot(a, a, n);
  R* dst = ring + slot * ld;
  for (int64_t k = 0; k < n; ++k) dst[k] = narrow_exact<R>(a[k]);
}

}  // namespace sef
