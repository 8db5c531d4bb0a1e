// Turing: mma.sync m16n8k8 (fp16 only -- bf16 MMA arrived with sm_80). The
// packed layout was chosen so that a m16n8k16 step is exactly two m16n8k8
// steps: A registers {0,1} and B register 0 are k 0..7, {2,3} and 1 are k 8..15.
// No cp.async on Turing, so weights are prefetched into registers.
//
// CUDA 12.x builds compile this file for sm_70 too (every TU gets the whole arch
// list); CI checks that with NVRTC 12.9, so the host half is hidden from NVRTC.
#include "awqgemm/gemm_tile.cuh"

namespace awqgemm {

struct Sm75M16n8k8 : M16n8Lanes {
  template <typename T>
  __host__ __device__ static constexpr bool supported() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
    return false;
#else
    return SameType<T, __half>::value;
#endif
  }

  template <typename T>
  __device__ __forceinline__ static void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[2]), "r"(a[3]), "r"(b1));
#endif
  }
};

}  // namespace awqgemm

#if !defined(__CUDACC_RTC__)
#include "awqgemm/families.h"
#include "awqgemm/launch.h"

namespace awqgemm {

cudaError_t launch_sm75_m16n8k8(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  if (p.dtype != DType::kFloat16) return cudaErrorNotSupported;
  return launch_family<__half, Sm75M16n8k8, false>(p, cfg, stream);
}

}  // namespace awqgemm
#endif
