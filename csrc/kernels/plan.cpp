#include "kernels/plan.h"

#include <algorithm>

namespace sef {

std::string make_plan(const std::vector<int64_t>& sizes, const std::vector<int64_t>& bounds, std::vector<Chunk>& out) {
  out.clear();
  int64_t total = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    if (sizes[t] < 0) return "sizes[" + std::to_string(t) + "] is negative";
    total += sizes[t];
  }
  if (bounds.size() < 2) return "bounds needs at least two entries (0, ..., P)";
  if (bounds.front() != 0) return "bounds must start at 0";
  if (bounds.back() != total)
    return "bounds end at " + std::to_string(bounds.back()) + " but the tensors hold " + std::to_string(total) + " elements";
  for (size_t g = 1; g < bounds.size(); ++g)
    if (bounds[g] < bounds[g - 1]) return "bounds must be non-decreasing";

  size_t t = 0, g = 0;
  int64_t tensor_start = 0;
  for (int64_t flat = 0; flat < total;) {
    while (tensor_start + sizes[t] <= flat) tensor_start += sizes[t++];
    while (bounds[g + 1] <= flat) ++g;
    const int64_t end = std::min({tensor_start + sizes[t], bounds[g + 1], (flat / kChunk + 1) * kChunk});
    out.push_back(Chunk{int64_t(t), flat - tensor_start, flat, end - flat, int64_t(g)});
    flat = end;
  }
  return {};
}

}  // namespace sef
