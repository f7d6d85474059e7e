// Types and conversions shared by the C++ and CUDA kernels. No torch include:
// nvcc compile-checks these files on machines without torch's CUDA headers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SEF_HD __host__ __device__ __forceinline__
// The visitors below run host lambdas on the host and device lambdas on the device.
#define SEF_VISITOR _Pragma("nv_exec_check_disable")
#else
#define SEF_HD inline
#define SEF_VISITOR
#endif

// The CUDA launchers are declared when compiling CUDA or a CUDA-enabled build.
#if defined(__CUDACC__) || defined(SEF_WITH_CUDA)
#include <cuda_runtime_api.h>
#define SEF_CUDA 1
#endif

namespace sef {

// Elements per chunk: products accumulate in float32 within a chunk and chunk
// partials are summed in float64. A CUDA block streams one chunk, each thread
// holding kChunk / 256 values of the entering row in registers.
constexpr int64_t kChunk = 8192;

// Ring rows a CUDA block reduces (one shared-memory float per row and warp).
constexpr int kCudaMaxRows = 128;

enum class DType : int8_t { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };

// 16-bit storage types as raw bits; the conversions below are exact and
// identical on host and device.
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

// One row of a plan (layout of the int64 [n, 5] plan tensor): a run of
// `length` elements of param tensor `tensor`, starting at `offset` inside it
// and at `flat` in the flat space, all in group `group`. Chunks are ordered by
// `flat`, so each group's chunks are contiguous.
struct Chunk {
  int64_t tensor, offset, flat, length, group;
};
static_assert(sizeof(Chunk) == 5 * sizeof(int64_t), "a plan row is five int64");

// A flat [P] vector (a parameter tensor, the snapshot, a row): data and type.
struct VecRef {
  void* data;
  DType dtype;
};

// A row-major [rows, cols] matrix (the ring) whose rows lie `ld` elements apart.
struct MatRef {
  void* data;
  DType dtype;
  int64_t rows, cols, ld;
};

SEF_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

SEF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

SEF_HD float to_float(float x) { return x; }
SEF_HD float to_float(double x) { return static_cast<float>(x); }
SEF_HD float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

// IEEE half to float without branches, so loops over it vectorise: rebias
// the exponent, then pick the infinity/NaN or the renormalised subnormal by mask.
SEF_HD float to_float(f16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t bits = uint32_t(x.bits & 0x7fffu) << 13;
  const uint32_t exp = bits & 0x0f800000u;
  const uint32_t normal = bits + (112u << 23);
  const uint32_t special = normal + (112u << 23);
  const uint32_t subnormal = float_to_bits(bits_to_float(normal + (1u << 23)) - bits_to_float(113u << 23));
  const uint32_t is_subnormal = 0u - uint32_t(exp == 0), is_special = 0u - uint32_t(exp == 0x0f800000u);
  const uint32_t out = (subnormal & is_subnormal) | (special & is_special) | (normal & ~(is_subnormal | is_special));
  return bits_to_float(out | sign);
}

SEF_HD double to_double(double x) { return x; }
template <class T>
SEF_HD double to_double(T x) { return static_cast<double>(to_float(x)); }

// float -> bfloat16 with round-to-nearest-even, NaN kept as the quiet NaN
// 0x7fc0: the same bits as torch's .to(torch.bfloat16).
SEF_HD bf16 to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};
  return bf16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// Rounding to a storage type (float or bf16).
template <class R>
SEF_HD R round_to(float x);
template <>
SEF_HD float round_to<float>(float x) { return x; }
template <>
SEF_HD bf16 round_to<bf16>(float x) { return to_bf16(x); }

// The update theta - snapshot, taken in the snapshot's precision S, rounded to
// float32 and then to the storage type R (gather's output, the ring).
template <class R, class S>
SEF_HD R rounded_update(S theta, S snapshot) {
  return round_to<R>(static_cast<float>(theta - snapshot));
}

// Reads a parameter in the snapshot's precision S (float or double).
template <class S, class T>
SEF_HD S load_as(T x) {
  if constexpr (sizeof(S) == sizeof(double)) return to_double(x);
  else return to_float(x);
}

// Calls f(T{}) with T the C++ type of dtype `d`.
SEF_VISITOR
template <class F>
SEF_HD void visit(DType d, F&& f) {
  switch (d) {
    case DType::F32: f(float{}); break;
    case DType::F64: f(double{}); break;
    case DType::BF16: f(bf16{}); break;
    case DType::F16: f(f16{}); break;
  }
}

// Calls f(S{}) for a snapshot dtype (float or double).
SEF_VISITOR
template <class F>
SEF_HD void visit_snapshot(DType d, F&& f) {
  if (d == DType::F64) f(double{});
  else f(float{});
}

// Calls f(R{}) for a ring dtype (float or bf16).
SEF_VISITOR
template <class F>
SEF_HD void visit_ring(DType d, F&& f) {
  if (d == DType::BF16) f(bf16{});
  else f(float{});
}

}  // namespace sef
