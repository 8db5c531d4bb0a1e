// Device-side building blocks shared by the kernel families: int4 -> 16-bit
// conversion, vector loads, and the 16-bit type traits.
#pragma once

#include <cuda_fp16.h>
#if !defined(AWQGEMM_NO_BF16)
#include <cuda_bf16.h>
#endif
#include "portable_types.h"

namespace awqgemm {

// std::is_same without <type_traits>, which NVRTC does not ship.
template <typename A, typename B>
struct SameType {
  static constexpr bool value = false;
};
template <typename A>
struct SameType<A, A> {
  static constexpr bool value = true;
};

template <typename T>
struct Half2Of;
template <>
struct Half2Of<__half> {
  using type = __half2;
  // (magic | q) reinterpreted as fp16 is exactly 1024 + q for q in 0..15.
  static constexpr uint32_t kMagic = 0x64006400u;
  static constexpr float kMagicValue = 1024.f;
  // 10 mantissa bits: a nibble masked in place at bits 4..7 reads (magic | 16 q) = 1024 + 16 q;
  // times 1/16 (0x2C00) it is 64 + q, exactly.
  static constexpr bool kHighNibbleInPlace = true;
  static constexpr uint32_t kSixteenth = 0x2C002C00u;
  // magic - magic / 16 = 960: (magic + z) - 960 = 64 + z, exactly.
  static constexpr uint32_t kHiBias = 0x63806380u;
};
#if !defined(AWQGEMM_NO_BF16)
template <>
struct Half2Of<__nv_bfloat16> {
  using type = __nv_bfloat162;
  // bf16 has 7 mantissa bits: 0x4300 is 128.0 and (0x4300 | q) is 128 + q.
  static constexpr uint32_t kMagic = 0x43004300u;
  static constexpr float kMagicValue = 128.f;
  // Bit 7 is the exponent's lowest bit: a nibble at bits 4..7 must be shifted down first.
  static constexpr bool kHighNibbleInPlace = false;
};
#endif

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t magic) {
  uint32_t r;
  // (a & mask) | magic in one instruction.
  asm volatile("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(a), "r"(mask), "r"(magic));
  return r;
}

__device__ __forceinline__ __half2 h2_sub(__half2 a, __half2 b) { return __hsub2(a, b); }
__device__ __forceinline__ __half2 h2_mul(__half2 a, __half2 b) { return __hmul2(a, b); }
__device__ __forceinline__ __half2 h2_fma(__half2 a, __half2 b, __half2 c) { return __hfma2(a, b, c); }
#if !defined(AWQGEMM_NO_BF16)
// bf16 pair arithmetic exists as instructions from sm_80 on; the families that
// run bf16 are sm_80+, so older targets never instantiate these.
__device__ __forceinline__ __nv_bfloat162 h2_sub(__nv_bfloat162 a, __nv_bfloat162 b) { return __hsub2(a, b); }
__device__ __forceinline__ __nv_bfloat162 h2_mul(__nv_bfloat162 a, __nv_bfloat162 b) { return __hmul2(a, b); }
__device__ __forceinline__ __nv_bfloat162 h2_fma(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // CUDA 12's headers have no bf16 fma below sm_80; this body is compiled there, never run.
  return __hadd2(__hmul2(a, b), c);
#else
  return __hfma2(a, b, c);
#endif
}
#endif

template <typename H2>
__device__ __forceinline__ uint32_t as_u32(H2 v) { return *reinterpret_cast<uint32_t*>(&v); }
template <typename H2>
__device__ __forceinline__ H2 from_u32(uint32_t v) { return *reinterpret_cast<H2*>(&v); }

// One packed word (8 nibbles) as 4 A-operand registers of q - z pairs, exact
// (integers in -15..15). Register i takes its zero from row pair entry
// row_of(i): families whose fragment alternates rows r / r + 8 per register
// use i & 1, those that keep a row's registers together use i >> 1.
//
// Register i holds nibbles i and i + 4 (one per 16-bit half). Even i mask the
// low nibble of each byte into the magic's mantissa: magic + q. In fp16, odd i
// mask the high nibble in place, magic + 16 q, and one fma by 1/16 takes it to
// magic / 16 + q: no shift for those, so a word costs one shift, four lop3 and
// four subtract-or-fma (three shifts before). The decode kernels are
// issue-bound, so instructions per weight are time (docs/perf-notes.md).
// bf16's 7 mantissa bits cannot hold 16 q: its odd nibbles are shifted down.
template <typename T, bool kRowAlternates>
__device__ __forceinline__ void dequant_word_offsets(uint32_t word, const uint32_t zero2[2], uint32_t a[4]) {
  using H2 = typename Half2Of<T>::type;
  const uint32_t hi_word = word >> 8;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = kRowAlternates ? (i & 1) : (i >> 1);
    const uint32_t src = i < 2 ? word : hi_word;
    if constexpr (Half2Of<T>::kHighNibbleInPlace) {
      if (i % 2 == 1) {
        // (magic + 16 q) / 16 - (magic / 16 + z) is exact; the zero's form is shared by all
        // words of a tile (the compiler computes it once per zero2).
        const uint32_t biased16 = lop3_and_or(src, 0x00F000F0u, Half2Of<T>::kMagic);
        const H2 neg_zero_hi = h2_sub(from_u32<H2>(Half2Of<T>::kHiBias), from_u32<H2>(zero2[r]));
        a[i] = as_u32(h2_fma(from_u32<H2>(biased16), from_u32<H2>(Half2Of<T>::kSixteenth), neg_zero_hi));
        continue;
      }
    }
    // (magic + q) - (magic + z) is exact.
    const uint32_t biased = lop3_and_or(i % 2 == 0 ? src : src >> 4, 0x000F000Fu, Half2Of<T>::kMagic);
    a[i] = as_u32(h2_sub(from_u32<H2>(biased), from_u32<H2>(zero2[r])));
  }
}

// Dequantizes one packed word into 4 A-operand registers: (q - z) * s, the
// multiply rounding once. Row pair entries as in dequant_word_offsets.
template <typename T, bool kRowAlternates>
__device__ __forceinline__ void dequant_word(uint32_t word, const uint32_t zero2[2], const uint32_t scale2[2],
                                             uint32_t a[4]) {
  using H2 = typename Half2Of<T>::type;
  dequant_word_offsets<T, kRowAlternates>(word, zero2, a);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = kRowAlternates ? (i & 1) : (i >> 1);
    a[i] = as_u32(h2_mul(from_u32<H2>(a[i]), from_u32<H2>(scale2[r])));
  }
}

// The scale of a (scale, zero+magic) pair word as fp32.
template <typename T>
__device__ __forceinline__ float scale_of_pair(uint32_t sz) {
  if constexpr (SameType<T, __half>::value) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(sz & 0xFFFFu)));
  } else {
    return __uint_as_float(sz << 16);  // bf16 is the top half of an fp32
  }
}

// Splits a (scale, zero+magic) pair word into broadcast pairs: one byte
// permute each (ptxas made two instructions of each mask-and-shift form).
__device__ __forceinline__ void split_scale_zero(uint32_t sz, uint32_t& scale2, uint32_t& zero2) {
  scale2 = __byte_perm(sz, 0, 0x1010);
  zero2 = __byte_perm(sz, 0, 0x3232);
}

// Read-only 16-byte load. Weights are streamed once, so keep them out of L1.
__device__ __forceinline__ uint4 ldg_stream_u4(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Activations are re-read by every block along N: let them live in L1/L2.
__device__ __forceinline__ uint4 ldg_u4(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 ldg_u2(const void* p) {
  uint2 v;
  asm volatile("ld.global.nc.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
#if !defined(AWQGEMM_NO_BF16)
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
#endif

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
#if !defined(AWQGEMM_NO_BF16)
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
#endif

}  // namespace awqgemm
