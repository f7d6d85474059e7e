// Device-side building blocks shared by the CUDA kernels.
//
// One block of kThreads threads owns one chunk of the plan (at most kChunk
// elements) and streams it through every ring row. Each thread owns a fixed set
// of the chunk's elements for the whole kernel (see Span), keeps the entering
// row's values for them in registers, and loads 4-element packs per row with
// one vector load where the row is aligned. Per-row sums go warp shuffle ->
// shared memory -> one float64 partial per (chunk, row); a separate kernel
// (reduce_cuda.cu) adds partials per group in a fixed order. No atomics, no host
// synchronisation: the bits are the same on every run.
#pragma once

#include <cuda_runtime.h>

#include "kernels/common.h"

namespace sef {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Packs per thread in a full chunk: all of a row's loads are issued together.
constexpr int kPacks = int(kChunk / 4 / kThreads);
static_assert(kChunk % (4 * kThreads) == 0, "a chunk is a whole number of packs per thread");
static_assert(kCudaMaxRows + 1 <= kThreads, "one thread writes each row's partial");

// Parameter tensors passed by value as a kernel argument (about 2.3 KiB, under
// the 4 KiB limit). Blocks whose chunk lies in a tensor outside
// [first, first + count) return at once, so a list longer than kBatchTensors
// takes several launches over the same plan.
constexpr int kBatchTensors = 256;
struct ParamBatch {
  const void* data[kBatchTensors];
  DType dtype[kBatchTensors];
  int64_t first, count;
};

template <class T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <class T>
__device__ __forceinline__ bool pack_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Pack4<T>) == 0;
}

// 4 consecutive elements: one vector access when `vec` (block-uniform), else four.
template <class T>
__device__ __forceinline__ Pack4<T> load4(const T* p, bool vec) {
  if (vec) return *reinterpret_cast<const Pack4<T>*>(p);
  Pack4<T> out;
#pragma unroll
  for (int j = 0; j < 4; ++j) out.v[j] = p[j];
  return out;
}

template <class T>
__device__ __forceinline__ void store4(T* p, const Pack4<T>& x, bool vec) {
  if (vec) {
    *reinterpret_cast<Pack4<T>*>(p) = x;
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) p[j] = x.v[j];
}

// Which elements of a chunk (n elements from flat index `flat`) this thread
// owns: `head` scalar elements up to the first multiple of 4 in the flat space,
// then packs of 4 (pack q starts at element head + 4q; thread t owns the packs
// with q % kThreads == t), then a scalar tail of fewer than 4. The scalar
// elements (at most 6) go to the first threads. Every pass of a kernel uses
// this mapping, so a thread reads ring[slot] before it writes the same elements.
struct Span {
  int head, packs, scalar;  // scalar: this thread's scalar element, or -1

  __device__ Span(int64_t flat, int64_t length) {
    const int n = int(length);
    head = min(n, int((4 - (flat & 3)) & 3));
    packs = (n - head) >> 2;
    const int t = threadIdx.x, tail = n - head - 4 * packs;
    scalar = t < head ? t : (t < head + tail ? head + 4 * packs + (t - head) : -1);
  }
  __device__ bool has(int j) const { return int(threadIdx.x) + j * kThreads < packs; }
  // First element of this thread's j-th pack.
  __device__ int pack(int j) const { return head + 4 * (int(threadIdx.x) + j * kThreads); }
};

// The entering row's values at this thread's elements, as float32.
struct Owned {
  float4 p[kPacks];
  float s;
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Per-row sums of one block: sums[r][w] is warp w's share of row r.
struct RowSums {
  float v[kCudaMaxRows + 1][kWarps];
};

__device__ __forceinline__ void add_row_sum(RowSums& sums, int r, float partial) {
  partial = warp_sum(partial);
  if ((threadIdx.x & 31) == 0) sums.v[r][threadIdx.x >> 5] = partial;
}

__device__ __forceinline__ float dot4(const float4& a, float x, float y, float z, float w, float acc) {
  acc = fmaf(a.x, x, acc);
  acc = fmaf(a.y, y, acc);
  acc = fmaf(a.z, z, acc);
  return fmaf(a.w, w, acc);
}

// sums row i = <a, rows[i]> over the chunk for i < n_rows (rows[i] at
// rows + i * ld, already offset to the chunk's first element).
template <class R>
__device__ __forceinline__ void dot_rows(const Owned& a, const Span& sp, const R* rows, int64_t ld, int n_rows,
                                         RowSums& sums) {
  for (int i = 0; i < n_rows; ++i) {
    const R* row = rows + i * ld;
    const bool vec = pack_aligned(row + sp.head);
    Pack4<R> x[kPacks];
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
      if (sp.has(j)) x[j] = load4(row + sp.pack(j), vec);
    const float xs = sp.scalar >= 0 ? to_float(row[sp.scalar]) : 0.0f;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kPacks; ++j)
      if (sp.has(j))
        acc = dot4(a.p[j], to_float(x[j].v[0]), to_float(x[j].v[1]), to_float(x[j].v[2]), to_float(x[j].v[3]), acc);
    if (sp.scalar >= 0) acc = fmaf(a.s, xs, acc);
    add_row_sum(sums, i, acc);
  }
}

// sums row r = <a, a>.
__device__ __forceinline__ void self_dot(const Owned& a, const Span& sp, int r, RowSums& sums) {
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < kPacks; ++j)
    if (sp.has(j)) acc = dot4(a.p[j], a.p[j].x, a.p[j].y, a.p[j].z, a.p[j].w, acc);
  if (sp.scalar >= 0) acc = fmaf(a.s, a.s, acc);
  add_row_sum(sums, r, acc);
}

// row[e] = a[e] at this thread's elements (a is already representable in R).
template <class R>
__device__ __forceinline__ void store_row(R* row, const Owned& a, const Span& sp) {
  const bool vec = pack_aligned(row + sp.head);
#pragma unroll
  for (int j = 0; j < kPacks; ++j)
    if (sp.has(j)) {
      const Pack4<R> x{{round_to<R>(a.p[j].x), round_to<R>(a.p[j].y), round_to<R>(a.p[j].z), round_to<R>(a.p[j].w)}};
      store4(row + sp.pack(j), x, vec);
    }
  if (sp.scalar >= 0) row[sp.scalar] = round_to<R>(a.s);
}

// partials[0..cols) = the block's per-row sums, warps added in order in float64.
__device__ __forceinline__ void write_partials(const RowSums& sums, int cols, double* partials) {
  __syncthreads();
  if (int(threadIdx.x) < cols) {
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += sums.v[threadIdx.x][w];
    partials[threadIdx.x] = total;
  }
}

// The slide proper, for one chunk of the entering row a (already rounded to
// R): the block's sums <a, ring[i]> (ring[slot] read before it is
// overwritten) and <a, a> to partials[0..rows], then ring[slot] = a.
template <class R>
__device__ __forceinline__ void slide_rounded(const Owned& a, const Span& sp, R* ring, int64_t ld, int rows, int64_t slot,
                                              RowSums& sums, double* partials) {
  dot_rows(a, sp, ring, ld, rows, sums);
  self_dot(a, sp, rows, sums);
  store_row(ring + slot * ld, a, sp);
  write_partials(sums, rows + 1, partials);
}

// a = round_R(float(theta - snapshot)) at this thread's elements, then
// snapshot = theta (theta and snapshot offset to the chunk's first element).
template <class R, class P, class S>
__device__ __forceinline__ void take_update(const P* theta, S* snapshot, const Span& sp, Owned& a) {
  const bool vt = pack_aligned(theta + sp.head), vs = pack_aligned(snapshot + sp.head);
#pragma unroll
  for (int j = 0; j < kPacks; ++j)
    if (sp.has(j)) {
      const Pack4<P> th = load4(theta + sp.pack(j), vt);
      const Pack4<S> old = load4(snapshot + sp.pack(j), vs);
      Pack4<S> now;
      float d[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        now.v[c] = load_as<S>(th.v[c]);
        d[c] = to_float(rounded_update<R>(now.v[c], old.v[c]));
      }
      a.p[j] = make_float4(d[0], d[1], d[2], d[3]);
      store4(snapshot + sp.pack(j), now, vs);
    }
  if (sp.scalar >= 0) {
    const S now = load_as<S>(theta[sp.scalar]);
    a.s = to_float(rounded_update<R>(now, snapshot[sp.scalar]));
    snapshot[sp.scalar] = now;
  }
}

// a = round_R(src) as float32 at this thread's elements (src offset to the
// chunk's first element; R = float leaves the values as they are).
template <class R, class V>
__device__ __forceinline__ void take_row(const V* src, const Span& sp, Owned& a) {
  const bool vec = pack_aligned(src + sp.head);
#pragma unroll
  for (int j = 0; j < kPacks; ++j)
    if (sp.has(j)) {
      const Pack4<V> x = load4(src + sp.pack(j), vec);
      a.p[j] = make_float4(to_float(round_to<R>(to_float(x.v[0]))), to_float(round_to<R>(to_float(x.v[1]))),
                           to_float(round_to<R>(to_float(x.v[2]))), to_float(round_to<R>(to_float(x.v[3]))));
    }
  if (sp.scalar >= 0) a.s = to_float(round_to<R>(to_float(src[sp.scalar])));
}

// Calls launch(batch) for each run of up to kBatchTensors parameter tensors.
template <class Launch>
inline void for_each_batch(const VecRef* params, int64_t n_params, Launch&& launch) {
  for (int64_t first = 0; first < n_params; first += kBatchTensors) {
    ParamBatch batch{};
    batch.first = first;
    batch.count = n_params - first < kBatchTensors ? n_params - first : kBatchTensors;
    for (int64_t t = 0; t < batch.count; ++t) {
      batch.data[t] = params[first + t].data;
      batch.dtype[t] = params[first + t].dtype;
    }
    launch(batch);
  }
}

// The parameter tensor of a block's chunk within its batch, or -1 when the
// chunk belongs to another batch.
__device__ __forceinline__ int64_t batch_index(const ParamBatch& batch, const Chunk& ch) {
  const int64_t t = ch.tensor - batch.first;
  return t >= 0 && t < batch.count ? t : -1;
}

}  // namespace cuda
}  // namespace sef
