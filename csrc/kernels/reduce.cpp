#include "kernels/reduce.h"

#include <algorithm>

namespace sef {

void reduce_partials_cpu(const double* partials, int64_t n, int64_t cols, const Chunk* chunks, int64_t groups, double* out) {
  std::fill(out, out + groups * cols, 0.0);
  for (int64_t k = 0; k < n; ++k) {
    double* dst = out + (chunks ? chunks[k].group : 0) * cols;
    const double* src = partials + k * cols;
    for (int64_t c = 0; c < cols; ++c) dst[c] += src[c];
  }
}

}  // namespace sef
