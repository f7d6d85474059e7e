// The Python module spectral_edge_fast._C: the device-independent helpers and
// the ops of each device (cpu/ops.h) in submodules `cpu` and `cuda`. The ops'
// schemas, fake implementations and argument checks live in one place, the
// custom ops of spectral_edge_fast/kernels/ops.py, which call these.
#include <cstring>
#include <string>
#include <vector>

#include "cpu/ops.h"
#include "kernels/dots.h"
#include "kernels/plan.h"

namespace sef {
namespace {

// The chunk plan for parameter tensors of `sizes` split into groups at
// `bounds`: an int64 [n, 5] CPU tensor of (tensor, offset, flat, length, group)
// rows. The backend computes it once per layout (and uploads it once per device).
at::Tensor plan(const std::vector<int64_t>& sizes, const std::vector<int64_t>& bounds) {
  std::vector<Chunk> chunks;
  const std::string error = make_plan(sizes, bounds, chunks);
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("plan", &sef::plan);
  m.def("built_with_cuda", &sef::built_with_cuda);
  m.def("cpu_isa", [] { return std::string(sef::cpu_isa()); });
  m.def("gram_spans", &sef::gram_spans);  // the span count of gram's float64 partials, [spans, W * W]
  sef::bind_cpu(m.def_submodule("cpu"));
#ifdef SEF_WITH_CUDA
  sef::bind_cuda(m.def_submodule("cuda"));
#endif
}
