// The op schemas (one definition for every device) and the device-independent
// helpers. Each device registers its kernels with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

#include <ATen/ATen.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/plan.h"

namespace sef {
namespace {

// The chunk plan for parameter tensors of `sizes` split into groups at
// `bounds`: an int64 [n, 5] CPU tensor of (tensor, offset, flat, length, group)
// rows. The window computes it once per layout (and uploads it once per device).
at::Tensor plan(c10::IntArrayRef sizes, c10::IntArrayRef bounds) {
  std::vector<Chunk> chunks;
  const std::string error = make_plan(sizes.vec(), bounds.vec(), chunks);
  TORCH_CHECK(error.empty(), "plan: ", error);
  at::Tensor out = at::empty({int64_t(chunks.size()), 5}, at::kLong);
  std::memcpy(out.data_ptr<int64_t>(), chunks.data(), chunks.size() * sizeof(Chunk));
  return out;
}

bool built_with_cuda() {
#ifdef SEF_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace sef

TORCH_LIBRARY(spectral_edge_fast, m) {
  m.def("plan(int[] sizes, int[] bounds) -> Tensor", &sef::plan);
  m.def("built_with_cuda() -> bool", &sef::built_with_cuda);
  m.def("gather(Tensor[] params, Tensor(a!) snapshot, Tensor(b!) out, Tensor plan) -> ()");
  m.def("step(Tensor[] params, Tensor(a!) snapshot, Tensor(b!) ring, int slot, Tensor plan, int groups) -> Tensor");
  m.def("slide(Tensor(a!) ring, Tensor row, int slot, Tensor plan, int groups) -> Tensor");
  m.def("project(Tensor ring, Tensor vec, Tensor plan, int groups) -> Tensor");
  m.def("combine(Tensor ring, Tensor coeffs) -> Tensor");
  m.def("gram(Tensor x) -> Tensor");
}

// The ops are not differentiable: autograd passes them through, so results
// never carry a grad_fn even when the parameters require grad.
TORCH_LIBRARY_IMPL(spectral_edge_fast, Autograd, m) {
  for (const char* op : {"gather", "step", "slide", "project", "combine", "gram"})
    m.impl(op, torch::CppFunction::makeFallthrough());
}
