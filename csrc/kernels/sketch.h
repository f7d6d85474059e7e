// sketch: the signed bucket sketch S theta of the parameters, in float64.
#pragma once

#include "kernels/common.h"

namespace sef {

// One run of a segment table (int64 [n, 6]): `length` elements of view `view`
// from `start`, whose coordinates are `coord`, `coord + 1`, ... (the flat
// index in the full, unsharded tensor; for an identity group, the index in the
// group's full concatenation), hashed with the tensor's `key`.
struct SketchSeg {
  int64_t view, start, length, key, coord, group;
};
static_assert(sizeof(SketchSeg) == 6 * sizeof(int64_t), "a segment row is six int64");

// One group (int64 [G, 7]): its m buckets at `out` in the output, its segment
// rows [seg_begin, seg_end), its local `numel`, whether coordinates are the
// buckets themselves (`identity`: the group has at most m numbers), and the
// `parts` its elements are split into, each summed into its own buckets, then
// the parts added in order: the same bits for any number of threads.
struct SketchGroup {
  int64_t out, m, identity, seg_begin, seg_end, numel, parts;
};
static_assert(sizeof(SketchGroup) == 7 * sizeof(int64_t), "a group row is seven int64");

// The counter-based hash of coordinate c of the tensor with key `key`; its
// low bit is the coordinate's sign (odd: -1). Written once for host and
// device; spectral_edge_fast/kernels/sketch.py mirrors it and the rest below.
SEF_HD uint32_t sketch_hash(uint64_t key, uint64_t c) {
  uint32_t x = (uint32_t(c) ^ uint32_t(key)) + uint32_t(c >> 32) * 0x9E3779B9u + uint32_t(key >> 32);
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

SEF_HD uint32_t sketch_bucket(uint32_t h, int64_t m) { return uint32_t((uint64_t(h) * uint64_t(m)) >> 32); }

// Blocks: a hashed group's coordinates c in blocks of L = 2^shift (the largest
// power of two <= m, at most kSketchMaxBlock), block b = c >> shift. Block b
// starts at bucket sketch_offset(key, b, m) and its coordinates take the next
// buckets in order, wrapping at m: bucket (offset + (c & (L - 1))) mod m.
// Within a block no two coordinates share a bucket; the offset, hashed with
// another key than the signs, places blocks independently of each other.
constexpr int64_t kSketchMaxBlock = 1024;
constexpr uint64_t kSketchOffsetSalt = 0x9E3779B97F4A7C15ull;

SEF_HD int sketch_block_shift(int64_t m) {
  int shift = 0;
  while ((int64_t(2) << shift) <= m && (int64_t(2) << shift) <= kSketchMaxBlock) ++shift;
  return shift;
}

SEF_HD uint32_t sketch_offset(uint64_t key, uint64_t block, int64_t m) {
  return sketch_bucket(sketch_hash(key + kSketchOffsetSalt, block), m);
}

// The bucket of coordinate c (sketch_block_shift(m) as `shift`).
SEF_HD int64_t sketch_block_bucket(uint64_t key, uint64_t c, int64_t m, int shift) {
  const int64_t j = int64_t(sketch_offset(key, c >> shift, m)) + int64_t(c & ((uint64_t(1) << shift) - 1));
  return j >= m ? j - m : j;
}

// out[g.out : g.out + g.m] = S theta over each group, every bucket written.
// scratch holds at least max(parts * m) doubles over groups with parts > 1.
void sketch_cpu(const VecRef* views, const SketchSeg* segs, const SketchGroup* groups, int64_t n_groups, double* out,
                double* scratch, int threads);

#ifdef SEF_CUDA
// out += S theta over the rows of a device work table (int64 [n_rows, 8],
// spectral_edge_fast/kernels/sketch.py's sketch_work); views are the device tensors.
void sketch_cuda(const VecRef* views, int64_t n_views, const int64_t* work, int64_t n_rows, double* out,
                 cudaStream_t stream);
#endif

}  // namespace sef
