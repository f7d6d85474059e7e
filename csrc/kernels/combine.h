// combine: out = ring^T coeffs, a direction in parameter space.
#pragma once

#include "kernels/common.h"

namespace sef {

// out[p] = sum_i coeffs[i] * ring[i, p] in float32, rows added in order.
void combine_cpu(MatRef ring, const float* coeffs, float* out, int threads);

#ifdef SEF_CUDA
// coeffs is a device pointer to ring.rows floats.
void combine_cuda(MatRef ring, const float* coeffs, float* out, cudaStream_t stream);
#endif

}  // namespace sef
