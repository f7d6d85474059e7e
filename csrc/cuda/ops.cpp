// CUDA registrations: argument checks, then the kernels of csrc/kernels/*.cu on
// the current stream. No host synchronisation and no host-device copy (the plan
// is uploaded once, by the caller), so the ops can be captured in a CUDA graph.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

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

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_rows(int64_t rows, int64_t limit, const char* op) {
  TORCH_CHECK(rows <= limit, op, ": the CUDA kernels handle rings of up to ", num(limit), " rows, got ", num(rows),
              "; use a smaller window or the torch backend");
}

at::Tensor reduce(const at::Tensor& partials, const Chunk* chunks, int64_t groups) {
  at::Tensor out = at::empty({groups, partials.size(1)}, partials.options());
  reduce_partials_cuda(partials.const_data_ptr<double>(), partials.size(0), partials.size(1), chunks, groups,
                       out.data_ptr<double>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const c10::cuda::CUDAGuard guard(out.device());
  gather_cuda(refs.data(), int64_t(refs.size()), snap, dst, chunks, plan.size(0), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor step(at::TensorList params, at::Tensor snapshot, at::Tensor ring, int64_t slot, const at::Tensor& plan,
                int64_t groups) {
  constexpr const char* op = "step";
  const MatRef r = check_ring(ring, op);
  check_rows(r.rows, kCudaMaxRows, op);
  const VecRef snap = check_snapshot(snapshot, r.cols, ring.device(), op);
  const std::vector<VecRef> refs = check_params(params, r.cols, ring.device(), op);
  check_slot(slot, r.rows, op);
  const Chunk* chunks = check_plan(plan, groups, ring.device(), op);
  const c10::cuda::CUDAGuard guard(ring.device());
  at::Tensor partials = at::empty({plan.size(0), r.rows + 1}, ring.options().dtype(at::kDouble));
  step_cuda(refs.data(), int64_t(refs.size()), snap, r, slot, chunks, plan.size(0), partials.data_ptr<double>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return reduce(partials, chunks, groups);
}

at::Tensor slide(at::Tensor ring, const at::Tensor& row, int64_t slot, const at::Tensor& plan, int64_t groups) {
  constexpr const char* op = "slide";
  const MatRef r = check_ring(ring, op);
  check_rows(r.rows, kCudaMaxRows, op);
  check_vec(row, r.cols, ring.device(), op, "row");
  const VecRef src{const_cast<void*>(row.const_data_ptr()), value_dtype(row, op, "row")};
  check_slot(slot, r.rows, op);
  const Chunk* chunks = check_plan(plan, groups, ring.device(), op);
  const c10::cuda::CUDAGuard guard(ring.device());
  at::Tensor partials = at::empty({plan.size(0), r.rows + 1}, ring.options().dtype(at::kDouble));
  slide_cuda(src, r, slot, chunks, plan.size(0), partials.data_ptr<double>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return reduce(partials, chunks, groups);
}

at::Tensor project(const at::Tensor& ring, const at::Tensor& vec, const at::Tensor& plan, int64_t groups) {
  constexpr const char* op = "project";
  const MatRef r = check_ring(ring, op);
  check_rows(r.rows, kCudaMaxRows, op);
  check_vec(vec, r.cols, ring.device(), op, "vec");
  const VecRef src{const_cast<void*>(vec.const_data_ptr()), value_dtype(vec, op, "vec")};
  const Chunk* chunks = check_plan(plan, groups, ring.device(), op);
  const c10::cuda::CUDAGuard guard(ring.device());
  at::Tensor partials = at::empty({plan.size(0), r.rows}, ring.options().dtype(at::kDouble));
  project_cuda(src, r, chunks, plan.size(0), partials.data_ptr<double>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return reduce(partials, chunks, groups);
}

// coeffs already on the device keeps the op free of host-device copies.
at::Tensor combine(const at::Tensor& ring, const at::Tensor& coeffs) {
  constexpr const char* op = "combine";
  const MatRef r = check_ring(ring, op);
  check_rows(r.rows, kCudaMaxRows, op);
  TORCH_CHECK(coeffs.numel() == r.rows, op, ": coeffs has ", num(coeffs.numel()), " elements but the ring has ", num(r.rows), " rows");
  const c10::cuda::CUDAGuard guard(ring.device());
  const at::Tensor c = coeffs.to(ring.device(), at::kFloat, /*non_blocking=*/true).contiguous();
  at::Tensor out = at::empty({r.cols}, ring.options().dtype(at::kFloat));
  combine_cuda(r, c.const_data_ptr<float>(), out.data_ptr<float>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor gram(const at::Tensor& x) {
  const MatRef m = check_ring(x, "gram", "x");
  check_rows(m.rows, kGramMaxRowsCuda, "gram");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor partials = at::empty({gram_spans(m.cols), m.rows * m.rows}, x.options().dtype(at::kDouble));
  gram_cuda(m, partials.data_ptr<double>(), stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return reduce(partials, nullptr, 1).view({m.rows, m.rows});
}

}  // namespace
}  // namespace sef

TORCH_LIBRARY_IMPL(spectral_edge_fast, CUDA, m) {
  m.impl("gather", &sef::gather);
  m.impl("step", &sef::step);
  m.impl("slide", &sef::slide);
  m.impl("project", &sef::project);
  m.impl("combine", &sef::combine);
  m.impl("gram", &sef::gram);
}
