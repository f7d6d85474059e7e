// CPU registrations: argument checks, then the OpenMP kernels in csrc/kernels.
// Threads follow torch.get_num_threads(); the results do not depend on them.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "cpu/checks.h"
#include "kernels/combine.h"
#include "kernels/gather.h"
#include "kernels/gram.h"
#include "kernels/project.h"
#include "kernels/reduce.h"
#include "kernels/slide.h"
#include "kernels/step.h"

namespace sef {
namespace {

// Plan contents are only checked here, where they are on the host: every
// chunk inside P and inside its tensor (`sizes`), groups in order.
void check_plan_rows(const Chunk* chunks, int64_t n, int64_t cols, int64_t groups, const std::vector<int64_t>& sizes,
                     const char* op) {
  int64_t group = 0;
  for (int64_t c = 0; c < n; ++c) {
    const Chunk& ch = chunks[c];
    const bool ok = ch.tensor >= 0 && ch.tensor < int64_t(sizes.size()) && ch.offset >= 0 && ch.length >= 0 &&
                    ch.offset + ch.length <= sizes[ch.tensor] && ch.flat >= 0 && ch.flat + ch.length <= cols &&
                    ch.group >= group && ch.group < groups;
    TORCH_CHECK(ok, op, ": plan row ", num(c),
                " does not fit these tensors and groups; build the plan from the same sizes and bounds");
    group = ch.group;
  }
}

std::vector<int64_t> numels(at::TensorList tensors) {
  std::vector<int64_t> out;
  for (const at::Tensor& t : tensors) out.push_back(t.numel());
  return out;
}

at::Tensor reduce(const at::Tensor& partials, const Chunk* chunks, int64_t groups) {
  at::Tensor out = at::empty({groups, partials.size(1)}, partials.options());
  reduce_partials_cpu(partials.const_data_ptr<double>(), partials.size(0), partials.size(1), chunks, groups,
                      out.data_ptr<double>());
  return out;
}

void gather(at::TensorList params, at::Tensor snapshot, at::Tensor out, const at::Tensor& plan) {
  constexpr const char* op = "gather";
  const int64_t cols = out.numel();
  check_vec(out, cols, out.device(), op, "out");
  const VecRef dst{out.data_ptr(), ring_dtype(out, op, "out")};
  const VecRef snap = check_snapshot(snapshot, cols, out.device(), op);
  const std::vector<VecRef> refs = check_params(params, cols, out.device(), op);
  const Chunk* chunks = check_plan(plan, 1, out.device(), op);
  check_plan_rows(chunks, plan.size(0), cols, std::numeric_limits<int64_t>::max(), numels(params), op);
  gather_cpu(refs.data(), snap, dst, chunks, plan.size(0), at::get_num_threads());
}

at::Tensor step(at::TensorList params, at::Tensor snapshot, at::Tensor ring, int64_t slot, const at::Tensor& plan,
                int64_t groups) {
  constexpr const char* op = "step";
  const MatRef r = check_ring(ring, op);
  const VecRef snap = check_snapshot(snapshot, r.cols, ring.device(), op);
  const std::vector<VecRef> refs = check_params(params, r.cols, ring.device(), op);
  check_slot(slot, r.rows, op);
  const Chunk* chunks = check_plan(plan, groups, ring.device(), op);
  check_plan_rows(chunks, plan.size(0), r.cols, groups, numels(params), op);
  at::Tensor partials = at::empty({plan.size(0), r.rows + 1}, ring.options().dtype(at::kDouble));
  step_cpu(refs.data(), snap, r, slot, chunks, plan.size(0), partials.data_ptr<double>(), at::get_num_threads());
  return reduce(partials, chunks, groups);
}

at::Tensor slide(at::Tensor ring, const at::Tensor& row, int64_t slot, const at::Tensor& plan, int64_t groups) {
  constexpr const char* op = "slide";
  const MatRef r = check_ring(ring, op);
  check_vec(row, r.cols, ring.device(), op, "row");
  const VecRef src{const_cast<void*>(row.const_data_ptr()), value_dtype(row, op, "row")};
  check_slot(slot, r.rows, op);
  const Chunk* chunks = check_plan(plan, groups, ring.device(), op);
  check_plan_rows(chunks, plan.size(0), r.cols, groups, {r.cols}, op);
  at::Tensor partials = at::empty({plan.size(0), r.rows + 1}, ring.options().dtype(at::kDouble));
  slide_cpu(src, r, slot, chunks, plan.size(0), partials.data_ptr<double>(), at::get_num_threads());
  return reduce(partials, chunks, groups);
}

at::Tensor project(const at::Tensor& ring, const at::Tensor& vec, const at::Tensor& plan, int64_t groups) {
  constexpr const char* op = "project";
  const MatRef r = check_ring(ring, op);
  check_vec(vec, r.cols, ring.device(), op, "vec");
  const VecRef src{const_cast<void*>(vec.const_data_ptr()), value_dtype(vec, op, "vec")};
  const Chunk* chunks = check_plan(plan, groups, ring.device(), op);
  check_plan_rows(chunks, plan.size(0), r.cols, groups, {r.cols}, op);
  at::Tensor partials = at::empty({plan.size(0), r.rows}, ring.options().dtype(at::kDouble));
  project_cpu(src, r, chunks, plan.size(0), partials.data_ptr<double>(), at::get_num_threads());
  return reduce(partials, chunks, groups);
}

at::Tensor combine(const at::Tensor& ring, const at::Tensor& coeffs) {
  constexpr const char* op = "combine";
  const MatRef r = check_ring(ring, op);
  TORCH_CHECK(coeffs.numel() == r.rows, op, ": coeffs has ", num(coeffs.numel()), " elements but the ring has ", num(r.rows), " rows");
  const at::Tensor c = coeffs.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor out = at::empty({r.cols}, ring.options().dtype(at::kFloat));
  combine_cpu(r, c.const_data_ptr<float>(), out.data_ptr<float>(), at::get_num_threads());
  return out;
}

at::Tensor gram(const at::Tensor& x) {
  const MatRef m = check_ring(x, "gram", "x");
  at::Tensor partials = at::empty({gram_spans(m.cols), m.rows * m.rows}, x.options().dtype(at::kDouble));
  gram_cpu(m, partials.data_ptr<double>(), at::get_num_threads());
  return reduce(partials, nullptr, 1).view({m.rows, m.rows});
}

}  // namespace
}  // namespace sef

TORCH_LIBRARY_IMPL(spectral_edge_fast, CPU, m) {
  m.impl("gather", &sef::gather);
  m.impl("step", &sef::step);
  m.impl("slide", &sef::slide);
  m.impl("project", &sef::project);
  m.impl("combine", &sef::combine);
  m.impl("gram", &sef::gram);
}
