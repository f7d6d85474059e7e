// gather: out = theta - snapshot (rounded to out's type), then snapshot = theta.
#pragma once

#include "kernels/common.h"

namespace sef {

// theta is params[chunk.tensor] from chunk.offset; snapshot (float or double)
// and out (float or bf16) are indexed by chunk.flat. The difference is taken in
// the snapshot's precision, then rounded to float and to out's type.
void gather_cpu(const VecRef* params, VecRef snapshot, VecRef out, const Chunk* chunks, int64_t n_chunks, int threads);

#ifdef SEF_CUDA
// chunks is a device pointer; params are the device tensors.
void gather_cuda(const VecRef* params, int64_t n_params, VecRef snapshot, VecRef out, const Chunk* chunks,
                 int64_t n_chunks, cudaStream_t stream);
#endif

}  // namespace sef
