// The extension's ops, written once for both devices: the argument checks of
// checks.h, then the kernels of a device policy `K` (Cpu in cpu/ops.cpp, Cuda in
// cuda/ops.cpp). The Python front-end (spectral_edge_fast/kernels/ops.py) has
// already validated every argument; these checks keep a direct call from
// reading out of bounds. A policy provides:
//   kMaxRows, kGramMaxRows   the most ring rows its kernels take
//   kHostPlan                whether plan rows can be read here (checked if so)
//   Guard                    a device guard constructed from an at::Device
//   gather, step, slide, project, combine, gram, reduce: the kernel launches
#pragma once

#include <torch/extension.h>

#include <vector>

#include "cpu/checks.h"
#include "kernels/gram.h"

namespace sef {

template <class K>
struct Ops {
  static void check_rows(int64_t rows, int64_t limit, const char* op) {
    TORCH_CHECK(rows <= limit, op, ": the ", K::kName, " kernels handle rings of up to ", num(limit), " rows, got ",
                num(rows), "; use a smaller window or the torch backend");
  }

  static const Chunk* plan_rows(const at::Tensor& plan, int64_t groups, int64_t cols, const std::vector<int64_t>& sizes,
                                const at::Device& device, const char* op) {
    const Chunk* chunks = check_plan(plan, groups, device, op);
    if (K::kHostPlan) check_plan_rows(chunks, plan.size(0), cols, groups, sizes, op);
    return chunks;
  }

  static at::Tensor reduce(const at::Tensor& partials, const Chunk* chunks, int64_t groups) {
    at::Tensor out = at::empty({groups, partials.size(1)}, partials.options());
    K::reduce(partials.const_data_ptr<double>(), partials.size(0), partials.size(1), chunks, groups, out.data_ptr<double>());
    return out;
  }

  static void gather(const std::vector<at::Tensor>& params, at::Tensor snapshot, at::Tensor out, const at::Tensor& plan) {
    constexpr const char* op = "gather";
    const int64_t cols = out.numel();
    check_vec(out, cols, out.device(), op, "out");
    const VecRef dst{out.data_ptr(), ring_dtype(out, op, "out")};
    const VecRef snap = check_snapshot(snapshot, cols, out.device(), op);
    const std::vector<VecRef> refs = check_params(params, cols, out.device(), op);
    const Chunk* chunks = plan_rows(plan, 1, cols, numels(params), out.device(), op);
    const typename K::Guard guard(out.device());
    K::gather(refs, snap, dst, chunks, plan.size(0));
  }

  static at::Tensor step(const std::vector<at::Tensor>& params, at::Tensor snapshot, at::Tensor ring, int64_t slot,
                         const at::Tensor& plan, int64_t groups) {
    constexpr const char* op = "step";
    const MatRef r = check_ring(ring, op);
    check_rows(r.rows, K::kMaxRows, op);
    const VecRef snap = check_snapshot(snapshot, r.cols, ring.device(), op);
    const std::vector<VecRef> refs = check_params(params, r.cols, ring.device(), op);
    check_slot(slot, r.rows, op);
    const Chunk* chunks = plan_rows(plan, groups, r.cols, numels(params), ring.device(), op);
    const typename K::Guard guard(ring.device());
    at::Tensor partials = at::empty({plan.size(0), r.rows + 1}, ring.options().dtype(at::kDouble));
    K::step(refs, snap, r, slot, chunks, plan.size(0), partials.data_ptr<double>());
    return reduce(partials, chunks, groups);
  }

  static at::Tensor slide(at::Tensor ring, const at::Tensor& row, int64_t slot, const at::Tensor& plan, int64_t groups) {
    constexpr const char* op = "slide";
    const MatRef r = check_ring(ring, op);
    check_rows(r.rows, K::kMaxRows, op);
    check_vec(row, r.cols, ring.device(), op, "row");
    const VecRef src{const_cast<void*>(row.const_data_ptr()), value_dtype(row, op, "row")};
    check_slot(slot, r.rows, op);
    const Chunk* chunks = plan_rows(plan, groups, r.cols, {r.cols}, ring.device(), op);
    const typename K::Guard guard(ring.device());
    at::Tensor partials = at::empty({plan.size(0), r.rows + 1}, ring.options().dtype(at::kDouble));
    K::slide(src, r, slot, chunks, plan.size(0), partials.data_ptr<double>());
    return reduce(partials, chunks, groups);
  }

  static at::Tensor project(const at::Tensor& ring, const at::Tensor& vec, const at::Tensor& plan, int64_t groups) {
    constexpr const char* op = "project";
    const MatRef r = check_ring(ring, op);
    check_rows(r.rows, K::kMaxRows, op);
    check_vec(vec, r.cols, ring.device(), op, "vec");
    const VecRef src{const_cast<void*>(vec.const_data_ptr()), value_dtype(vec, op, "vec")};
    const Chunk* chunks = plan_rows(plan, groups, r.cols, {r.cols}, ring.device(), op);
    const typename K::Guard guard(ring.device());
    at::Tensor partials = at::empty({plan.size(0), r.rows}, ring.options().dtype(at::kDouble));
    K::project(src, r, chunks, plan.size(0), partials.data_ptr<double>());
    return reduce(partials, chunks, groups);
  }

  // coeffs on the ring's device: no host-device copy in a CUDA call, and no
  // CPU kernel reading a copy from the GPU that has not landed.
  static at::Tensor combine(const at::Tensor& ring, const at::Tensor& coeffs) {
    constexpr const char* op = "combine";
    const MatRef r = check_ring(ring, op);
    check_rows(r.rows, K::kMaxRows, op);
    check_device(coeffs, ring.device(), op, "coeffs");
    TORCH_CHECK(coeffs.numel() == r.rows, op, ": coeffs has ", num(coeffs.numel()), " elements but the ring has ",
                num(r.rows), " rows");
    const typename K::Guard guard(ring.device());
    const at::Tensor c = coeffs.to(at::kFloat).contiguous();
    at::Tensor out = at::empty({r.cols}, ring.options().dtype(at::kFloat));
    K::combine(r, c.const_data_ptr<float>(), out.data_ptr<float>());
    return out;
  }

  static at::Tensor gram(const at::Tensor& x) {
    const MatRef m = check_ring(x, "gram", "x");
    check_rows(m.rows, K::kGramMaxRows, "gram");
    const typename K::Guard guard(x.device());
    at::Tensor partials = at::empty({gram_spans(m.rows, m.cols), m.rows * m.rows}, x.options().dtype(at::kDouble));
    K::gram(m, partials.data_ptr<double>());
    return reduce(partials, nullptr, 1).view({m.rows, m.rows});
  }
};

// The ops of policy `K` as functions of a Python module (spectral_edge_fast._C.cpu, ._C.cuda).
template <class K>
void bind(pybind11::module_ m) {
  m.def("gather", &Ops<K>::gather);
  m.def("step", &Ops<K>::step);
  m.def("slide", &Ops<K>::slide);
  m.def("project", &Ops<K>::project);
  m.def("combine", &Ops<K>::combine);
  m.def("gram", &Ops<K>::gram);
}

void bind_cpu(pybind11::module_ m);
#ifdef SEF_WITH_CUDA
void bind_cuda(pybind11::module_ m);
#endif

}  // namespace sef
