// Ampere, Ada, Hopper and Blackwell: mma.sync m16n8k16 with fp32 accumulate,
// fp16 and bf16 activations, weights streamed through a cp.async ring.
#include "awqgemm/families.h"
#include "awqgemm/launch.h"

namespace awqgemm {
namespace {

struct MmaSm80 : M16n8Lanes {
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


}  // namespace

cudaError_t launch_sm80_m16n8k16(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  return p.dtype == DType::kBFloat16 ? launch_family<__nv_bfloat16, MmaSm80, true>(p, cfg, stream)
                                     : launch_family<__half, MmaSm80, true>(p, cfg, stream);
}

}  // namespace awqgemm
