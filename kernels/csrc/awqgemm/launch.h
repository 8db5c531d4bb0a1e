// Host-side launch of one gemm_tc_kernel instantiation (kept out of
// gemm_tile.cuh so that header stays device-only and NVRTC-compilable).
#pragma once

#include <cuda_runtime.h>

#include "gemm_tile.cuh"

namespace awqgemm {

constexpr int kWarpsPerBlock = kWarpsPerBlockDefault;

// Register-staged pipelines get shallower as the activation tile grows, to
// stay clear of spills: MT = 4 holds 4 x 32 bytes of activations per stage.
template <int MT>
constexpr int stages_for() {
  return MT >= 4 ? 2 : 4;
}

template <typename T, int MT, int NT, class Fam, bool kAsyncWeights>
cudaError_t launch_gemm_tc(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  const int ntiles = padded_n(p.N) / kTileN;
  const dim3 grid(ceil_div(ntiles, NT), ceil_div(p.M, 8 * MT), cfg.splits);
  gemm_tc_kernel<T, MT, NT, kWarpsPerBlock, stages_for<MT>(), Fam, kAsyncWeights>
      <<<grid, kWarpsPerBlock * 32, 0, stream>>>(p, cfg.splits);
  return cudaGetLastError();
}

}  // namespace awqgemm
