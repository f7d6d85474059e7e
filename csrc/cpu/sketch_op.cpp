// The sketch op of the CPU module (spectral_edge_fast._C.cpu.sketch): checks,
// then kernels/sketch.cpp. Tables from spectral_edge_fast/kernels/sketch.py.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <vector>

#include "cpu/checks.h"
#include "kernels/sketch.h"

namespace sef {
namespace {

void sketch(const std::vector<at::Tensor>& views, const at::Tensor& segs, const at::Tensor& groups, at::Tensor out,
            at::Tensor scratch) {
  constexpr const char* op = "sketch";
  const at::Device cpu(at::kCPU);
  TORCH_CHECK(segs.device() == cpu && segs.scalar_type() == at::kLong && segs.dim() == 2 && segs.size(1) == 6 &&
                  segs.is_contiguous(),
              op, ": segs must be a contiguous int64 [n, 6] CPU tensor, got shape ", shape(segs.sizes()));
  TORCH_CHECK(groups.device() == cpu && groups.scalar_type() == at::kLong && groups.dim() == 2 && groups.size(1) == 7 &&
                  groups.is_contiguous(),
              op, ": groups must be a contiguous int64 [G, 7] CPU tensor, got shape ", shape(groups.sizes()));
  check_device(out, cpu, op, "out");
  check_device(scratch, cpu, op, "scratch");
  TORCH_CHECK(out.scalar_type() == at::kDouble && out.is_contiguous(), op, ": out must be contiguous float64");
  TORCH_CHECK(scratch.scalar_type() == at::kDouble && scratch.is_contiguous(), op, ": scratch must be contiguous float64");
  std::vector<VecRef> refs;
  for (size_t t = 0; t < views.size(); ++t) {
    const std::string what = "views[" + std::to_string(t) + "]";
    check_device(views[t], cpu, op, what.c_str());
    TORCH_CHECK(views[t].is_contiguous(), op, ": ", what, " must be contiguous");
    refs.push_back(VecRef{const_cast<void*>(views[t].const_data_ptr()), value_dtype(views[t], op, what.c_str())});
  }
  const auto* sg = reinterpret_cast<const SketchSeg*>(segs.const_data_ptr<int64_t>());
  const auto* gr = reinterpret_cast<const SketchGroup*>(groups.const_data_ptr<int64_t>());
  const int64_t n_segs = segs.size(0), n_groups = groups.size(0);
  // Every read and write inside its tensor: the tables come from Python.
  for (int64_t s = 0; s < n_segs; ++s) {
    const SketchSeg& x = sg[s];
    TORCH_CHECK(x.view >= 0 && x.view < int64_t(views.size()) && x.start >= 0 && x.length >= 0 && x.coord >= 0 &&
                    x.start + x.length <= views[x.view].numel(),
                op, ": segment ", num(s), " does not fit the views");
  }
  for (int64_t g = 0; g < n_groups; ++g) {
    const SketchGroup& x = gr[g];
    int64_t numel = 0;
    bool fits = x.seg_begin >= 0 && x.seg_begin <= x.seg_end && x.seg_end <= n_segs && x.m >= 1 && x.m <= (int64_t(1) << 32) &&
                x.out >= 0 && x.out + x.m <= out.numel() && x.parts >= 1 && (x.parts == 1 || x.parts * x.m <= scratch.numel());
    for (int64_t s = x.seg_begin; fits && s < x.seg_end; ++s) {
      numel += sg[s].length;
      fits = !x.identity || sg[s].coord + sg[s].length <= x.m;
    }
    TORCH_CHECK(fits && numel == x.numel, op, ": group ", num(g), " does not fit its segments, out or scratch");
  }
  sketch_cpu(refs.data(), sg, gr, n_groups, out.data_ptr<double>(), scratch.data_ptr<double>(), at::get_num_threads());
}

}  // namespace

void bind_sketch_cpu(pybind11::module_ m) { m.def("sketch", &sketch); }

}  // namespace sef
