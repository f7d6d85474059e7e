// The chunk plan: how the flat space is cut into chunks for every op that
// walks it. Host-only; the CUDA ops read an uploaded copy of its rows.
#pragma once

#include <string>
#include <vector>

#include "kernels/common.h"

namespace sef {

// Cuts [0, P) at every tensor boundary (from `sizes`), every group boundary
// (`bounds`, 0 = o_0 <= ... <= o_G = P) and every multiple of kChunk, so no
// chunk crosses a tensor or a group and most chunks start aligned. Returns an
// empty string on success, else what is wrong with `sizes`/`bounds`.
std::string make_plan(const std::vector<int64_t>& sizes, const std::vector<int64_t>& bounds, std::vector<Chunk>& out);

}  // namespace sef
