// Host-side launch of one gemm_tc_kernel instantiation (kept out of
// gemm_tile.cuh so that header stays device-only and NVRTC-compilable).
#pragma once

#include <cuda_runtime.h>

#include "gemm_tile.cuh"

namespace awqgemm {

// Register-staged pipelines get shallower as the activation tile grows, to
// stay clear of spills: MT = 4 holds 4 x 32 bytes of activations per stage.
template <int MT>
constexpr int stages_for() {
  return MT >= 4 ? 2 : 4;
}

template <typename T, int MT, int NT, int KWARPS, class Fam, bool kAsyncWeights>
cudaError_t launch_gemm_tc(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  const int ntiles = padded_n(p.N) / kTileN;
  const dim3 grid(ceil_div(ntiles, NT), ceil_div(p.M, 8 * MT), cfg.splits);
  gemm_tc_kernel<T, MT, NT, KWARPS, stages_for<MT>(), Fam, kAsyncWeights>
      <<<grid, KWARPS * 32, 0, stream>>>(p, cfg.splits);
  return cudaGetLastError();
}

// The (MT, NT, KWARPS) instantiations every family provides; the dispatcher
// only asks for these.
template <typename T, class Fam, bool kAsyncWeights>
cudaError_t launch_family(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  switch (cfg.mt * 1000 + cfg.nt * 100 + cfg.kwarps) {
    case 1204: return launch_gemm_tc<T, 1, 2, 4, Fam, kAsyncWeights>(p, cfg, stream);
    case 1208: return launch_gemm_tc<T, 1, 2, 8, Fam, kAsyncWeights>(p, cfg, stream);
    case 2204: return launch_gemm_tc<T, 2, 2, 4, Fam, kAsyncWeights>(p, cfg, stream);
    case 2208: return launch_gemm_tc<T, 2, 2, 8, Fam, kAsyncWeights>(p, cfg, stream);
    case 4404: return launch_gemm_tc<T, 4, 4, 4, Fam, kAsyncWeights>(p, cfg, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

}  // namespace awqgemm
