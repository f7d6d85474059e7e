// Argument checks of the extension's ops (cpu/ops.h, for both devices): each
// failure is a TORCH_CHECK naming the op, the argument and what was expected.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "kernels/common.h"

namespace sef {

// Numbers, shapes and devices reach a message as strings, never through
// std::ostream's numeric insertion: with torch 2.11's CUDA wheel and the
// system's GCC, formatting a long into the message stream crashed (SIGSEGV in
// the locale's facets), so that an argument error killed the process.
inline std::string num(int64_t v) { return std::to_string(v); }

inline std::string shape(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

inline DType value_dtype(const at::Tensor& t, const char* op, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kDouble: return DType::F64;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default: TORCH_CHECK(false, op, ": ", what, " must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
  }
}

// Ring rows (and gather's output) are float32 or bfloat16.
inline DType ring_dtype(const at::Tensor& t, const char* op, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, op, ": ", what,
              " must be float32 or bfloat16, got ", t.scalar_type());
  return value_dtype(t, op, what);
}

inline void check_device(const at::Tensor& t, const at::Device& device, const char* op, const char* what) {
  TORCH_CHECK(t.device() == device, op, ": ", what, " is on ", t.device().str(), ", expected ", device.str(), " like the other arguments");
}

// A [rows, P] matrix with contiguous, non-overlapping rows (a padded row
// stride is fine).
inline MatRef check_ring(const at::Tensor& ring, const char* op, const char* what = "ring") {
  TORCH_CHECK(ring.dim() == 2, op, ": ", what, " must be 2-D [W, P], got shape ", shape(ring.sizes()));
  const int64_t rows = ring.size(0), cols = ring.size(1);
  TORCH_CHECK(cols <= 1 || ring.stride(1) == 1, op, ": ", what, " rows must be contiguous (stride(1) == 1), got strides ",
              shape(ring.strides()));
  const int64_t ld = rows > 1 ? ring.stride(0) : cols;
  TORCH_CHECK(ld >= cols, op, ": ", what, " rows overlap (stride(0) = ", num(ld), " < P = ", num(cols), ")");
  return MatRef{ring.data_ptr(), ring_dtype(ring, op, what), rows, cols, ld};
}

// A contiguous vector of P elements on the ring's device.
inline void check_vec(const at::Tensor& t, int64_t cols, const at::Device& device, const char* op, const char* what) {
  check_device(t, device, op, what);
  TORCH_CHECK(t.numel() == cols, op, ": ", what, " has ", num(t.numel()), " elements, expected P = ", num(cols));
  TORCH_CHECK(t.is_contiguous(), op, ": ", what, " must be contiguous");
}

inline VecRef check_snapshot(const at::Tensor& snapshot, int64_t cols, const at::Device& device, const char* op) {
  check_vec(snapshot, cols, device, op, "snapshot");
  TORCH_CHECK(snapshot.scalar_type() == at::kFloat || snapshot.scalar_type() == at::kDouble, op,
              ": snapshot must be float32 (float64 for float64 parameters), got ", snapshot.scalar_type());
  return VecRef{snapshot.data_ptr(), value_dtype(snapshot, op, "snapshot")};
}

// Contiguous parameter tensors on `device` whose sizes add up to P.
inline std::vector<VecRef> check_params(at::TensorList params, int64_t cols, const at::Device& device, const char* op) {
  std::vector<VecRef> refs;
  refs.reserve(params.size());
  int64_t total = 0;
  for (size_t t = 0; t < params.size(); ++t) {
    const at::Tensor& p = params[t];
    const std::string what = "params[" + std::to_string(t) + "]";
    check_device(p, device, op, what.c_str());
    TORCH_CHECK(p.is_contiguous(), op, ": ", what, " must be contiguous");
    refs.push_back(VecRef{const_cast<void*>(p.const_data_ptr()), value_dtype(p, op, what.c_str())});
    total += p.numel();
  }
  TORCH_CHECK(total == cols, op, ": params hold ", num(total), " elements, expected P = ", num(cols));
  return refs;
}

inline void check_slot(int64_t slot, int64_t rows, const char* op) {
  TORCH_CHECK(slot >= 0 && slot < rows, op, ": slot ", num(slot), " is outside the ring's ", num(rows), " rows");
}

// The plan from spectral_edge_fast::plan, on the ring's device.
inline const Chunk* check_plan(const at::Tensor& plan, int64_t groups, const at::Device& device, const char* op) {
  check_device(plan, device, op, "plan");
  TORCH_CHECK(plan.scalar_type() == at::kLong && plan.dim() == 2 && plan.size(1) == 5 && plan.is_contiguous(), op,
              ": plan must be the contiguous int64 [n, 5] tensor from spectral_edge_fast::plan, got ", plan.scalar_type(),
              " of shape ", shape(plan.sizes()));
  TORCH_CHECK(groups >= 1, op, ": groups must be at least 1, got ", num(groups));
  return reinterpret_cast<const Chunk*>(plan.const_data_ptr<int64_t>());
}

// Plan contents, where they are on the host: every chunk inside P and inside
// its tensor (`sizes`), groups in order.
inline void check_plan_rows(const Chunk* chunks, int64_t n, int64_t cols, int64_t groups,
                            const std::vector<int64_t>& sizes, const char* op) {
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

inline std::vector<int64_t> numels(at::TensorList tensors) {
  std::vector<int64_t> out;
  for (const at::Tensor& t : tensors) out.push_back(t.numel());
  return out;
}

}  // namespace sef
