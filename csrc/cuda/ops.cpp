// The CUDA policy of cpu/ops.h: the kernels of csrc/kernels/*.cu on the current
// stream. No host synchronisation and no host-device copy (the plan is uploaded
// once, by the caller), so the ops can be captured in a CUDA graph.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "cpu/ops.h"
#include "kernels/combine.h"
#include "kernels/gather.h"
#include "kernels/gram.h"
#include "kernels/project.h"
#include "kernels/reduce.h"
#include "kernels/slide.h"
#include "kernels/sketch.h"
#include "kernels/step.h"

namespace sef {

namespace {

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

struct Cuda {
  static constexpr const char* kName = "CUDA";
  static constexpr int64_t kMaxRows = kCudaMaxRows;
  static constexpr int64_t kGramMaxRows = kGramMaxRowsCuda;
  static constexpr bool kHostPlan = false;  // on the device: reading it would synchronise
  using Guard = c10::cuda::CUDAGuard;

  static void gather(const std::vector<VecRef>& params, VecRef snap, VecRef out, const Chunk* chunks, int64_t n) {
    gather_cuda(params.data(), int64_t(params.size()), snap, out, chunks, n, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void step(const std::vector<VecRef>& params, VecRef snap, MatRef ring, int64_t slot, const Chunk* chunks,
                   int64_t n, double* partials) {
    step_cuda(params.data(), int64_t(params.size()), snap, ring, slot, chunks, n, partials, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void slide(VecRef row, MatRef ring, int64_t slot, const Chunk* chunks, int64_t n, double* partials) {
    slide_cuda(row, ring, slot, chunks, n, partials, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void project(VecRef vec, MatRef ring, const Chunk* chunks, int64_t n, double* partials) {
    project_cuda(vec, ring, chunks, n, partials, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void combine(MatRef ring, const float* coeffs, float* out) {
    combine_cuda(ring, coeffs, out, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void gram(MatRef x, double* partials) {
    gram_cuda(x, partials, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  static void reduce(const double* partials, int64_t n, int64_t cols, const Chunk* chunks, int64_t groups, double* out) {
    reduce_partials_cuda(partials, n, cols, chunks, groups, out, stream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// out = S cat(views) from `work` (spectral_edge_fast/kernels/triton_ops.py
// sketch_work, on out's device): its rows were checked against the views and
// out when it was built, and reading them here would synchronise.
void sketch(const std::vector<at::Tensor>& views, const at::Tensor& work, at::Tensor out) {
  constexpr const char* op = "sketch";
  TORCH_CHECK(out.is_cuda() && out.scalar_type() == at::kDouble && out.is_contiguous(), op,
              ": out must be a contiguous float64 CUDA tensor");
  check_device(work, out.device(), op, "work");
  TORCH_CHECK(work.scalar_type() == at::kLong && work.dim() == 2 && work.size(1) == 8 && work.is_contiguous(), op,
              ": work must be a contiguous int64 [n, 8] tensor, got shape ", shape(work.sizes()));
  std::vector<VecRef> refs;
  for (size_t t = 0; t < views.size(); ++t) {
    const std::string what = "views[" + std::to_string(t) + "]";
    check_device(views[t], out.device(), op, what.c_str());
    TORCH_CHECK(views[t].is_contiguous(), op, ": ", what, " must be contiguous");
    refs.push_back(VecRef{const_cast<void*>(views[t].const_data_ptr()), value_dtype(views[t], op, what.c_str())});
  }
  const c10::cuda::CUDAGuard guard(out.device());
  out.zero_();
  sketch_cuda(refs.data(), int64_t(refs.size()), work.const_data_ptr<int64_t>(), work.size(0), out.data_ptr<double>(),
              stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void bind_cuda(pybind11::module_ m) {
  bind<Cuda>(m);
  m.def("sketch", &sketch);
}

}  // namespace sef
