// Ampere, Ada, Hopper and Blackwell: mma.sync m16n8k16 with fp32 accumulate,
// fp16 and bf16 activations, weights streamed through a cp.async ring.
//
// CUDA 12.x builds compile this file for sm_70 and sm_75 too (every TU gets the
// whole arch list; there the kernels reduce to a trap, never launched); CI checks
// that with NVRTC 12.9, so the host half is hidden from NVRTC.
#include "awqgemm/gemm_wtile.cuh"
#include "awqgemm/gemm_xshared.cuh"

namespace awqgemm {

struct Sm80M16n8k16 : M16n8Lanes {
  template <typename T>
  __host__ __device__ static constexpr bool supported() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    return false;
#else
    return true;
#endif
  }

  template <typename T>
  __device__ __forceinline__ static void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (SameType<T, __half>::value) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
  }
};

}  // namespace awqgemm

#if !defined(__CUDACC_RTC__)
#include "awqgemm/families.h"
#include "awqgemm/launch.h"

namespace awqgemm {
namespace {

template <typename T, int MT>
cudaError_t launch_xs(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  constexpr int kSmem = XsSmem<MT, kXsNT, kXsWarps, xs_stages(MT)>::kBytes;
  const int ntiles = padded_n(p.N) / kTileN;
  const bool grouped = p.row_offsets != nullptr;
  const dim3 grid(ceil_div(ntiles, kXsNT * kXsWarps), grouped_grid_rows(p.M, 8 * MT, grouped ? p.num_batches : 0),
                  cfg.splits);
  constexpr auto kernel = gemm_xs_kernel<T, MT, kXsNT, kXsWarps, xs_stages(MT), Sm80M16n8k16>;
  constexpr auto grouped_kernel = gemm_xs_kernel<T, MT, kXsNT, kXsWarps, xs_stages(MT), Sm80M16n8k16, true>;
  return grouped ? launch_with_smem<kSmem, grouped_kernel>(grid, kXsWarps * 32, p, cfg, stream)
                 : launch_with_smem<kSmem, kernel>(grid, kXsWarps * 32, p, cfg, stream);
}

template <typename T, int MT, int WM, int WK>
cudaError_t launch_wt(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  constexpr int kWN = kWtWarps / (WM * WK);
  constexpr int kNT = kWtTiles / kWN;
  using L = WtSmem<MT, WM, kWN, WK, kNT, kWtStages>;
  const int ntiles = padded_n(p.N) / kTileN;
  const dim3 grid(ceil_div(ntiles, L::kTiles), ceil_div(p.M, L::kBm), cfg.splits);
  constexpr auto kernel = gemm_wt_kernel<T, MT, WM, kWN, WK, kNT, kWtStages, Sm80M16n8k16>;
  return launch_with_smem<L::kBytes, kernel>(grid, L::kThreads, p, cfg, stream);
}

template <typename T>
cudaError_t launch_typed(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  if (cfg.kind == KernelKind::kKSplit) return launch_family<T, Sm80M16n8k16, true>(p, cfg, stream);
  if (cfg.kind == KernelKind::kWTile) {
    if (cfg.nt != kWtTiles || cfg.kwarps != kWtWarps) return cudaErrorInvalidConfiguration;
    switch (cfg.mt) {  // block tokens / 8
      case 4: return launch_wt<T, 4, 1, 2>(p, cfg, stream);
      case 8: return launch_wt<T, 8, 1, 2>(p, cfg, stream);
      case 16: return launch_wt<T, 8, 2, 1>(p, cfg, stream);
      default: return cudaErrorInvalidConfiguration;
    }
  }
  if (cfg.nt != kXsNT || cfg.kwarps != kXsWarps) return cudaErrorInvalidConfiguration;
  switch (cfg.mt) {
    case 4: return launch_xs<T, 4>(p, cfg, stream);
    case 8: return launch_xs<T, 8>(p, cfg, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

}  // namespace

cudaError_t launch_sm80_m16n8k16(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  return p.dtype == DType::kBFloat16 ? launch_typed<__nv_bfloat16>(p, cfg, stream)
                                     : launch_typed<__half>(p, cfg, stream);
}

}  // namespace awqgemm
#endif
