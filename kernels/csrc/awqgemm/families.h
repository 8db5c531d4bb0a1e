// Entry points of the kernel families. Each lives in its own translation unit,
// named for its architecture and MMA shape.
#pragma once

#include <cuda_runtime.h>

#include "tile_config.h"
#include "problem.h"

namespace awqgemm {

cudaError_t launch_sm80_m16n8k16(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream);
cudaError_t launch_sm75_m16n8k8(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream);
cudaError_t launch_sm70_m8n8k4(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream);
// Defined only where CMake built gemm_sm90a_m64nNk16.cu (AWQGEMM_HAS_SM90A).
cudaError_t launch_sm90a_m64nNk16(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream);

// The PTX arch (10 major + minor) the arch-generic kernels were compiled from
// for the current device -- 0 if none runs there. Decides whether they carry
// the sm90 griddepcontrol instructions (PDL): a device of 9.0 running code JIT-
// compiled from older PTX must not be launched as a programmatic dependent.
int compiled_ptx_arch();

// fp32 split-K partials [splits][M][N] (+ bias) -> out.
cudaError_t launch_splitk_reduce(const GemmProblem& p, int splits, bool pdl, cudaStream_t stream);

// Columns [n_begin, n_begin + n_count) of the packed weight -> dense transposed
// weight wt[n_count][K] in the activation dtype, for the large-M path (a dense
// GEMM per chunk of columns). n_begin is a multiple of the 16-column tile.
cudaError_t launch_dequantize_t(const void* qweight, const void* scale_zero, int layout, DType dtype, int N, int K,
                                int group_size, int n_begin, int n_count, void* wt, cudaStream_t stream);

}  // namespace awqgemm
