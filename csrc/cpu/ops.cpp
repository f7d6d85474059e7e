// The CPU policy of cpu/ops.h: the OpenMP kernels in csrc/kernels. Threads
// follow torch.get_num_threads(); the results do not depend on them.
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "cpu/ops.h"
#include "kernels/combine.h"
#include "kernels/gather.h"
#include "kernels/gram.h"
#include "kernels/project.h"
#include "kernels/reduce.h"
#include "kernels/slide.h"
#include "kernels/step.h"

namespace sef {
namespace {

struct Cpu {
  static constexpr const char* kName = "CPU";
  static constexpr int64_t kMaxRows = std::numeric_limits<int64_t>::max();
  static constexpr int64_t kGramMaxRows = kMaxRows;
  static constexpr bool kHostPlan = true;
  struct Guard {
    explicit Guard(const at::Device&) {}
  };

  static void gather(const std::vector<VecRef>& params, VecRef snap, VecRef out, const Chunk* chunks, int64_t n) {
    gather_cpu(params.data(), snap, out, chunks, n, at::get_num_threads());
  }
  static void step(const std::vector<VecRef>& params, VecRef snap, MatRef ring, int64_t slot, const Chunk* chunks,
                   int64_t n, double* partials) {
    step_cpu(params.data(), snap, ring, slot, chunks, n, partials, at::get_num_threads());
  }
  static void slide(VecRef row, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n, double* partials) {
    slide_cpu(row, ring, slot, chunks, n, partials, at::get_num_threads());
  }
  static void project(VecRef vec, MatRef ring, const Chunk* chunks, int64_t n, double* partials) {
    project_cpu(vec, ring, chunks, n, partials, at::get_num_threads());
  }
  static void combine(MatRef ring, const float* coeffs, float* out) { combine_cpu(ring, coeffs, out, at::get_num_threads()); }
  static void gram(MatRef x, double* partials) { gram_cpu(x, partials, at::get_num_threads()); }
  static void reduce(const double* partials, int64_t n, int64_t cols, const Chunk* chunks, int64_t groups, double* out) {
    reduce_partials_cpu(partials, n, cols, chunks, groups, out);
  }
};

}  // namespace

void bind_sketch_cpu(pybind11::module_ m);  // cpu/sketch_op.cpp

void bind_cpu(pybind11::module_ m) {
  bind<Cpu>(m);
  bind_sketch_cpu(m);
}

}  // namespace sef
