// Float32 dot products for the C++ kernels. kLanes independent accumulators
// let gcc vectorise without reassociating (no -ffast-math), and element k
// always lands in lane k % kLanes, so the bits do not depend on alignment,
// vector width or thread count.
#pragma once

#include "kernels/common.h"

// The per-chunk loops are also compiled for AVX2 and picked when the library
// loads (GCC function multiversioning). The AVX2 target has no FMA, so no
// multiply-add is fused and both versions give the same bits.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SEF_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SEF_CLONES
#endif

// Hand-vectorised AVX2 + FMA kernels (x86-64 only), taken when the CPU has both.
#if defined(__GNUC__) && defined(__x86_64__)
#define SEF_X86 1
#define SEF_AVX2_FMA __attribute__((target("avx2,fma")))
#define SEF_AVX512_BF16 __attribute__((target("avx512f,avx512bf16")))
#else
#define SEF_X86 0
#endif

namespace sef {

constexpr int kLanes = 16;

inline bool has_avx2_fma() {
#if SEF_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

inline bool has_avx512_bf16() {
#if SEF_X86
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
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

// out[i] = <a, rows[i]> over n elements for each of `rows` rows `ld` apart.
template <class R>
inline void dot_rows(const float* a, const R* rows_base, int64_t ld, int64_t rows, int64_t n, double* out) {
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
  for (int64_t k = 0; k < n; ++k) dst[k] = round_to<R>(a[k]);
}

}  // namespace sef
