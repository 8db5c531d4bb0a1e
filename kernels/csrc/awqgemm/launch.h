// Host-side launches of the tensor-core kernels (kept out of
// gemm_tile.cuh so that header stays device-only and NVRTC-compilable).
#pragma once

#include <cuda_runtime.h>

#include <atomic>

#include "gemm_tile.cuh"

namespace awqgemm {

// Launches `kernel` on `stream`, as a programmatic dependent launch if `pdl`.
template <class... Params, class... Args>
cudaError_t launch_maybe_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, int smem, bool pdl,
                             cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, args...);
  return err != cudaSuccess ? err : cudaGetLastError();
}

// Launches a kernel taking (GemmProblem, splits, pdl_flags) with kSmem bytes of dynamic
// shared memory (opt_in_smem). Opting in to > 48 KiB is a per-function, per-device
// attribute: set it on the first launch on each device (it neither allocates
// nor synchronizes, so it is also safe during capture). The kernel is a
// template argument so every instantiation keeps its own flag -- fp16 and
// bf16 kernels share a type, and a flag keyed on the type alone once left the
// bf16 kernels without the opt-in.
//
// With `pdl` the launch carries the programmatic-stream-serialization
// attribute (sm90+; see pdl_wait in gemm_tile.cuh): it may begin while the
// previous kernel on the stream drains. Stream capture records it as a
// programmatic graph edge, so graph replay keeps the overlap.
template <int kSmem, auto Kernel>
cudaError_t opt_in_smem() {
  if constexpr (kSmem > 48 * 1024) {
    constexpr int kMaxDevices = 64;
    static std::atomic<bool> opted_in[kMaxDevices];
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    if (device >= kMaxDevices || !opted_in[device].load(std::memory_order_acquire)) {
      err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
      if (err != cudaSuccess) return err;
      if (device < kMaxDevices) opted_in[device].store(true, std::memory_order_release);
    }
  }
  return cudaSuccess;
}

template <int kSmem, auto Kernel, class... Extra>
cudaError_t launch_with_smem(dim3 grid, int threads, const GemmProblem& p, const TileConfig& cfg,
                             cudaStream_t stream, Extra... extra) {
  const cudaError_t err = opt_in_smem<kSmem, Kernel>();
  if (err != cudaSuccess) return err;
  return launch_maybe_pdl(Kernel, grid, dim3(threads), kSmem, (cfg.pdl_flags & kPdlLaunched) != 0, stream, p, cfg.splits,
                          cfg.pdl_flags, extra...);
}

template <typename T, int MT, int NT, int KWARPS, class Fam, bool kAsyncWeights>
cudaError_t launch_gemm_tc(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  const int ntiles = padded_n(p.N) / kTileN;
  const dim3 grid(ceil_div(ntiles, NT), grouped_grid_rows(p.M, 8 * MT, p.row_offsets != nullptr ? p.num_batches : 0),
                  cfg.splits);
  constexpr int kStages = pipeline_stages(MT, kAsyncWeights);
  constexpr int kSmem = SmemLayout<MT, NT, KWARPS, kStages, kAsyncWeights>::kBytes;
  // Scales applied per k-tile where a k-tile lies in one group (gemm_tc_kernel's kGroupScaled):
  // the cp.async families (sm80+) only, whose lanes map accumulators to weight rows like their
  // A operands (M16n8Lanes::acc_row_half), and blocks of up to 16 tokens. Its 4 MT fmas per
  // column tile and k-tile replace 16 multiplies: at MT = 4 (32 x 64 blocks) the k-loop grew
  // (396 -> 428 instructions on sm_90a; MT = 1: 171 -> 151, MT = 2: 190 -> 174).
  if constexpr (kAsyncWeights && MT <= 2) {
    if (p.group_size >= kTileK) {
      return launch_with_smem<kSmem, gemm_tc_kernel<T, MT, NT, KWARPS, kStages, Fam, kAsyncWeights, true>>(
          grid, KWARPS * 32, p, cfg, stream);
    }
  }
  return launch_with_smem<kSmem, gemm_tc_kernel<T, MT, NT, KWARPS, kStages, Fam, kAsyncWeights>>(grid, KWARPS * 32, p, cfg,
                                                                                                stream);
}

// The (MT, NT, KWARPS) instantiations every family provides; the dispatcher
// only asks for these.
template <typename T, class Fam, bool kAsyncWeights>
cudaError_t launch_family(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  switch (cfg.mt * 1000 + cfg.nt * 100 + cfg.kwarps) {  // MT, NT, KWARPS
    case 1204: return launch_gemm_tc<T, 1, 2, 4, Fam, kAsyncWeights>(p, cfg, stream);
    case 1208: return launch_gemm_tc<T, 1, 2, 8, Fam, kAsyncWeights>(p, cfg, stream);
    case 2204: return launch_gemm_tc<T, 2, 2, 4, Fam, kAsyncWeights>(p, cfg, stream);
    case 2208: return launch_gemm_tc<T, 2, 2, 8, Fam, kAsyncWeights>(p, cfg, stream);
    default: break;
  }
  // 32 x 64 blocks: Volta's 16 accumulators per tile would need 256 registers.
  if constexpr (Fam::kAcc == 4) {
    if (cfg.mt == 4 && cfg.nt == 4 && cfg.kwarps == 4) return launch_gemm_tc<T, 4, 4, 4, Fam, kAsyncWeights>(p, cfg, stream);
  }
  // 16-warp blocks only where the pipeline lives in shared memory (sm80+):
  // the register-staged families would spill under the 128-register cap.
  if constexpr (kAsyncWeights) {
    switch (cfg.mt * 1000 + cfg.nt * 100 + cfg.kwarps) {
      case 1216: return launch_gemm_tc<T, 1, 2, 16, Fam, kAsyncWeights>(p, cfg, stream);
      case 2216: return launch_gemm_tc<T, 2, 2, 16, Fam, kAsyncWeights>(p, cfg, stream);
      // 64-column decode blocks (plan_ksplit's wide_decode): half the x bytes per weight byte of
      // the 32-column ones.
      case 1404: return launch_gemm_tc<T, 1, 4, 4, Fam, kAsyncWeights>(p, cfg, stream);
      case 2404: return launch_gemm_tc<T, 2, 4, 4, Fam, kAsyncWeights>(p, cfg, stream);
      // One-warp blocks for grouped decode GEMMs of short K (plan_ksplit).
      case 1201: return launch_gemm_tc<T, 1, 2, 1, Fam, kAsyncWeights>(p, cfg, stream);
      case 2201: return launch_gemm_tc<T, 2, 2, 1, Fam, kAsyncWeights>(p, cfg, stream);
      case 1401: return launch_gemm_tc<T, 1, 4, 1, Fam, kAsyncWeights>(p, cfg, stream);
      case 2401: return launch_gemm_tc<T, 2, 4, 1, Fam, kAsyncWeights>(p, cfg, stream);
      // 32 x 64 one-warp blocks: grouped tiles of experts with 9-32 rows (plan_ksplit).
      case 4401: return launch_gemm_tc<T, 4, 4, 1, Fam, kAsyncWeights>(p, cfg, stream);
      default: break;
    }
  }
  return cudaErrorInvalidConfiguration;
}

}  // namespace awqgemm
