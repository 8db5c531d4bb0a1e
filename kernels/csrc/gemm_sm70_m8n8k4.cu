// Volta: mma.sync m8n8k4 (fp16 in, fp32 accumulate).
//
// A Volta MMA is four independent 8x8x4 products, one per quad pair
// (QP j = lanes 4j..4j+3 and 4j+16..4j+19). Packed layout 2 gives each quad
// pair its own quarter of every 16-k step: per step, QP j multiplies k chunk j
// for both 8-row halves of the 16-column tile (two instructions), so every
// lane still loads its weights with one 16-byte load per 64-k tile and its
// activations as 16 contiguous values -- the same traffic as layout 1. The four
// quad pairs' partial sums are added once, after the K loop, with two shuffles.
//
// This file is also compiled by NVRTC 12.x for sm_70 in CI (nvcc 13 cannot
// target Volta); the host half is hidden from NVRTC.
#include "awqgemm/gemm_tile.cuh"

namespace awqgemm {

struct Sm70M8n8k4 : Volta884Lanes {
  template <typename T>
  __host__ __device__ static constexpr bool supported() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
    return false;
#else
    return SameType<T, __half>::value;
#endif
  }

  // Two instructions per 16-k step: 8-row half h of the tile, with registers
  // {2h, 2h + 1} (k 0..3 of this quad pair's chunk) against the same B pair.
  template <typename T>
  __device__ __forceinline__ static void mma(float c[16], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float* d = c + 8 * h;
      asm volatile(
          "mma.sync.aligned.m8n8k4.row.col.f32.f16.f16.f32 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9}, {%10, %11}, "
          "{%0, %1, %2, %3, %4, %5, %6, %7};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
          : "r"(a[2 * h]), "r"(a[2 * h + 1]), "r"(b0), "r"(b1));
    }
#endif
  }
};

}  // namespace awqgemm

#if !defined(__CUDACC_RTC__)
#include "awqgemm/families.h"
#include "awqgemm/launch.h"

namespace awqgemm {

cudaError_t launch_sm70_m8n8k4(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  if (p.dtype != DType::kFloat16) return cudaErrorNotSupported;
  return launch_family<__half, Sm70M8n8k4, false>(p, cfg, stream);
}

}  // namespace awqgemm
#endif
