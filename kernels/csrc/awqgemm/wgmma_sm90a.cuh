// Hopper warpgroup MMA (wgmma, sm_90a only) with the A operand in registers.
//
// Why register-A: the weights arrive packed for mma.sync (layout 1), where
// each lane dequantizes its own 16 n x 16 k fragment straight into the
// m16n8k16 A registers. wgmma's register-A fragment is, warp by warp, the
// same layout (warp w of the warpgroup supplies rows 16 w .. 16 w + 15), so
// one packed format serves every kernel and every M. B (the activations) comes
// from shared memory through a matrix descriptor.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include "portable_types.h"

namespace awqgemm {

// Shared-memory matrix descriptor of a K-major operand in the 128-byte swizzle
// layout: rows of 128 bytes (64 16-bit k), 8-row atoms 1024 bytes apart, the
// 16-byte chunk index of row r XORed with r % 8 (the hardware applies the XOR
// to address bits [4:6] ^ [7:9], so atoms must start 1024-byte aligned). A
// k16 step starts 32 bytes further into the same rows.
//   bits  0-13 start address >> 4      bits 16-29 leading byte offset >> 4 (unused when swizzled)
//   bits 32-45 stride byte offset >> 4 bits 62-63 swizzle mode (1 = 128 bytes)
__device__ __forceinline__ uint64_t sw128_kmajor_desc(uint32_t smem_addr) {
  constexpr uint64_t kStrideBytes = 1024;
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) | (uint64_t{1} << 16) | ((kStrideBytes >> 4) << 32) |
         (uint64_t{1} << 62);
}

// wgmma ordering primitives. fence: registers written by ordinary
// instructions (the dequantized A, the zeroed accumulators) are made visible
// to the next wgmma. commit / wait: wgmmas run asynchronously; their A
// registers and B shared memory must stay untouched until waited for.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Shared memory written through the generic proxy (st.shared, cp.async) is
// read by wgmma through the async proxy: this fence orders the two.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps a register live (and in place) up to this point. The compiler sees a
// wgmma's operands as consumed when it is issued; the hardware reads them
// until the wait_group that retires it. Without this, the register allocator
// may hand an in-flight wgmma's A registers to the next tile's dequantization,
// and ptxas then serializes every wgmma (warning C7513) to stay correct.
template <int N>
__device__ __forceinline__ void keep_live(uint32_t (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void keep_live(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The two A register sets of the double-buffered k loop start at zero:
// keep_live reads the unused set before its first tile. Any nesting
// ([2][4][4], or [2][NTW][4][4] in v11.1).
__device__ __forceinline__ void zero_a_sets(uint32_t& a) { a = 0u; }
template <typename A, int N>
__device__ __forceinline__ void zero_a_sets(A (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) zero_a_sets(a[i]);
}

// D[64 x N] (fp32, += ) = A[64 x 16] (registers) * B[16 x N] (descriptor).
// D fragment: warp w, lane 4 g + q holds, for each 8-column chunk c,
// d[4 c + 2 h + t] = D[16 w + g + 8 h][8 c + 2 q + t].
template <int N, typename T>
struct WgmmaRA;

// The D operand numbers of a wgmma's asm, eight at a time (%0-%7, %8-%15, ...).
#define AWQGEMM_R8_0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define AWQGEMM_R8_1 "%8, %9, %10, %11, %12, %13, %14, %15"
#define AWQGEMM_R8_2 "%16, %17, %18, %19, %20, %21, %22, %23"
#define AWQGEMM_R8_3 "%24, %25, %26, %27, %28, %29, %30, %31"
#define AWQGEMM_R8_4 "%32, %33, %34, %35, %36, %37, %38, %39"
#define AWQGEMM_R8_5 "%40, %41, %42, %43, %44, %45, %46, %47"
#define AWQGEMM_R8_6 "%48, %49, %50, %51, %52, %53, %54, %55"
#define AWQGEMM_R8_7 "%56, %57, %58, %59, %60, %61, %62, %63"
#define AWQGEMM_R8_8 "%64, %65, %66, %67, %68, %69, %70, %71"
#define AWQGEMM_R8_9 "%72, %73, %74, %75, %76, %77, %78, %79"
#define AWQGEMM_R8_10 "%80, %81, %82, %83, %84, %85, %86, %87"
#define AWQGEMM_R8_11 "%88, %89, %90, %91, %92, %93, %94, %95"
#define AWQGEMM_R8_12 "%96, %97, %98, %99, %100, %101, %102, %103"
#define AWQGEMM_R8_13 "%104, %105, %106, %107, %108, %109, %110, %111"
#define AWQGEMM_R8_14 "%112, %113, %114, %115, %116, %117, %118, %119"
#define AWQGEMM_R8_15 "%120, %121, %122, %123, %124, %125, %126, %127"

// Eight accumulator operands d[b] .. d[b + 7] of an m64nN wgmma's D list.
#define AWQGEMM_F8(b)                                                                                       \
  "+f"(d[(b) + 0]), "+f"(d[(b) + 1]), "+f"(d[(b) + 2]), "+f"(d[(b) + 3]), "+f"(d[(b) + 4]), "+f"(d[(b) + 5]), \
      "+f"(d[(b) + 6]), "+f"(d[(b) + 7])

// m64n32: D in %0..%15, A in %16..%19, the descriptor %20, scale-d %21.
#define AWQGEMM_WGMMA_SETP_32 "setp.ne.b32 p, %21, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_32 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 \
  "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_32 \
  AWQGEMM_F8(0), AWQGEMM_F8(8)

// m64n48: D in %0..%23, A in %24..%27, the descriptor %28, scale-d %29.
#define AWQGEMM_WGMMA_SETP_48 "setp.ne.b32 p, %29, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_48 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 \
  "}, {%24, %25, %26, %27}, %28, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_48 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16)

// m64n64: D in %0..%31, A in %32..%35, the descriptor %36, scale-d %37.
#define AWQGEMM_WGMMA_SETP_64 "setp.ne.b32 p, %37, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_64 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 ", " AWQGEMM_R8_3 \
  "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_64 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16), AWQGEMM_F8(24)

// m64n128: D in %0..%63, A in %64..%67, the descriptor %68, scale-d %69.
#define AWQGEMM_WGMMA_SETP_128 "setp.ne.b32 p, %69, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_128 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 ", " AWQGEMM_R8_3 ", " AWQGEMM_R8_4 ", " AWQGEMM_R8_5 \
  ", " AWQGEMM_R8_6 ", " AWQGEMM_R8_7 \
  "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_128 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16), AWQGEMM_F8(24), AWQGEMM_F8(32), AWQGEMM_F8(40), AWQGEMM_F8(48), \
  AWQGEMM_F8(56)

// m64n160: D in %0..%79, A in %80..%83, the descriptor %84, scale-d %85.
#define AWQGEMM_WGMMA_SETP_160 "setp.ne.b32 p, %85, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_160 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 ", " AWQGEMM_R8_3 ", " AWQGEMM_R8_4 ", " AWQGEMM_R8_5 \
  ", " AWQGEMM_R8_6 ", " AWQGEMM_R8_7 ", " AWQGEMM_R8_8 ", " AWQGEMM_R8_9 \
  "}, {%80, %81, %82, %83}, %84, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_160 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16), AWQGEMM_F8(24), AWQGEMM_F8(32), AWQGEMM_F8(40), AWQGEMM_F8(48), \
  AWQGEMM_F8(56), AWQGEMM_F8(64), AWQGEMM_F8(72)

// m64n192: D in %0..%95, A in %96..%99, the descriptor %100, scale-d %101.
#define AWQGEMM_WGMMA_SETP_192 "setp.ne.b32 p, %101, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_192 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 ", " AWQGEMM_R8_3 ", " AWQGEMM_R8_4 ", " AWQGEMM_R8_5 \
  ", " AWQGEMM_R8_6 ", " AWQGEMM_R8_7 ", " AWQGEMM_R8_8 ", " AWQGEMM_R8_9 ", " AWQGEMM_R8_10 \
  ", " AWQGEMM_R8_11 \
  "}, {%96, %97, %98, %99}, %100, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_192 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16), AWQGEMM_F8(24), AWQGEMM_F8(32), AWQGEMM_F8(40), AWQGEMM_F8(48), \
  AWQGEMM_F8(56), AWQGEMM_F8(64), AWQGEMM_F8(72), AWQGEMM_F8(80), AWQGEMM_F8(88)

// m64n224: D in %0..%111, A in %112..%115, the descriptor %116, scale-d %117.
#define AWQGEMM_WGMMA_SETP_224 "setp.ne.b32 p, %117, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_224 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 ", " AWQGEMM_R8_3 ", " AWQGEMM_R8_4 ", " AWQGEMM_R8_5 \
  ", " AWQGEMM_R8_6 ", " AWQGEMM_R8_7 ", " AWQGEMM_R8_8 ", " AWQGEMM_R8_9 ", " AWQGEMM_R8_10 \
  ", " AWQGEMM_R8_11 ", " AWQGEMM_R8_12 ", " AWQGEMM_R8_13 \
  "}, {%112, %113, %114, %115}, %116, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_224 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16), AWQGEMM_F8(24), AWQGEMM_F8(32), AWQGEMM_F8(40), AWQGEMM_F8(48), \
  AWQGEMM_F8(56), AWQGEMM_F8(64), AWQGEMM_F8(72), AWQGEMM_F8(80), AWQGEMM_F8(88), AWQGEMM_F8(96), \
  AWQGEMM_F8(104)

// m64n256: D in %0..%127, A in %128..%131, the descriptor %132, scale-d %133.
#define AWQGEMM_WGMMA_SETP_256 "setp.ne.b32 p, %133, 0;\n"
#define AWQGEMM_WGMMA_OPERANDS_256 \
  "{" AWQGEMM_R8_0 ", " AWQGEMM_R8_1 ", " AWQGEMM_R8_2 ", " AWQGEMM_R8_3 ", " AWQGEMM_R8_4 ", " AWQGEMM_R8_5 \
  ", " AWQGEMM_R8_6 ", " AWQGEMM_R8_7 ", " AWQGEMM_R8_8 ", " AWQGEMM_R8_9 ", " AWQGEMM_R8_10 \
  ", " AWQGEMM_R8_11 ", " AWQGEMM_R8_12 ", " AWQGEMM_R8_13 ", " AWQGEMM_R8_14 ", " AWQGEMM_R8_15 \
  "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n"
#define AWQGEMM_WGMMA_D_256 \
  AWQGEMM_F8(0), AWQGEMM_F8(8), AWQGEMM_F8(16), AWQGEMM_F8(24), AWQGEMM_F8(32), AWQGEMM_F8(40), AWQGEMM_F8(48), \
  AWQGEMM_F8(56), AWQGEMM_F8(64), AWQGEMM_F8(72), AWQGEMM_F8(80), AWQGEMM_F8(88), AWQGEMM_F8(96), \
  AWQGEMM_F8(104), AWQGEMM_F8(112), AWQGEMM_F8(120)

// One specialization per (N, type): the instruction text differs only in the
// shape and the type suffix; the operand lists above differ only in N.
#define AWQGEMM_WGMMA_RA(N, TYPE, SUFFIX)                                                                  \
  template <>                                                                                              \
  struct WgmmaRA<N, TYPE> {                                                                                \
    __device__ __forceinline__ static void run(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc) { \
      asm volatile("{\n.reg .pred p;\n" AWQGEMM_WGMMA_SETP_##N "wgmma.mma_async.sync.aligned.m64n" #N        \
                   "k16.f32." SUFFIX "." SUFFIX " " AWQGEMM_WGMMA_OPERANDS_##N "}\n"                          \
                   : AWQGEMM_WGMMA_D_##N                                                                   \
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));                       \
    }                                                                                                      \
  };

AWQGEMM_WGMMA_RA(32, __half, "f16")
AWQGEMM_WGMMA_RA(32, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(48, __half, "f16")
AWQGEMM_WGMMA_RA(48, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(64, __half, "f16")
AWQGEMM_WGMMA_RA(64, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(128, __half, "f16")
AWQGEMM_WGMMA_RA(128, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(160, __half, "f16")
AWQGEMM_WGMMA_RA(160, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(192, __half, "f16")
AWQGEMM_WGMMA_RA(192, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(224, __half, "f16")
AWQGEMM_WGMMA_RA(224, __nv_bfloat16, "bf16")
AWQGEMM_WGMMA_RA(256, __half, "f16")
AWQGEMM_WGMMA_RA(256, __nv_bfloat16, "bf16")


}  // namespace awqgemm
