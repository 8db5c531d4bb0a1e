// The packed weight layout shared by every kernel family and by the Python
// packer (awqgemm/_layout.py implements the same mapping in torch; the two are
// tested against each other).
//
// Why this layout: the kernels use the 4-bit weights as the *A* operand of a
// 16x8x16 MMA (16 output columns n by 16 reduction indices k), and the
// activations as the B operand (8 tokens). For decode (M <= 8) that wastes the
// least of the MMA, and it lets each lane fetch a whole 16 n x 64 k tile's share
// with ONE coalesced 16-byte load: a warp reads 512 contiguous bytes per tile.
//
// Tile (nt, kt) covers n in [16 nt, 16 nt + 16), k in [64 kt, 64 kt + 64).
// Lane l = 4 g + q (g = l / 4 in 0..7, q = l % 4) owns 4 words, one per MMA
// k-step s in 0..3. Word s holds 8 nibbles; nibble p carries fragment element
//   e = (p < 4) ? 2 p : 2 (p - 4) + 1
// so that (w >> 4i) & 0x000F000F yields the register pair (e = 2i, e = 2i + 1)
// with no shuffles. Element e sits at
//   n = 16 nt + g + 8 ((e >> 1) & 1)
//   k = 64 kt + 16 q + 4 s + (e & 1) + 2 (e >> 2)
// i.e. the MMA's logical k order is permuted so that lane (g, q) needs exactly
// the 16 contiguous activations x[m][64 kt + 16 q .. + 16): two 16-byte loads,
// no shared-memory transpose. The permutation is applied identically to A and
// B, so the dot products are unchanged.
//
// Memory order: qweight words [N_pad / 16][K_pad / 64][32 lanes][4 steps].
// scale_zero (dtype T): [groups_pad][N_pad / 16][8 g][2 h][2], the last pair
// being (scale, zero + magic) for row n = 16 nt + g + 8 h. Storing the zero
// point with the conversion's magic bias (1024 for fp16, 128 for bf16) lets the
// kernel compute (q - z) exactly and round once in (q - z) * s -- bit-identical
// to a dequantization done in T, which (s, -z s) fusion is not for bf16.
// Padding (n >= N, k >= K) carries q = 0 and s = 0, so it contributes zero.
#pragma once

#include "portable_types.h"

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define AWQGEMM_HD __host__ __device__ __forceinline__
#else
#define AWQGEMM_HD inline
#endif

namespace awqgemm {

constexpr int kTileN = 16;
constexpr int kTileK = 64;
constexpr int kWordsPerLane = 4;
constexpr int kWordsPerTile = 32 * kWordsPerLane;
constexpr int kLayoutTc16x64 = 1;   // PackedWeight.layout for the sm75 / sm80 families
constexpr int kLayoutVolta884 = 2;  // PackedWeight.layout for the sm70 family (see gemm_sm70_m8n8k4.cu)

AWQGEMM_HD int round_up(int v, int m) { return (v + m - 1) / m * m; }
AWQGEMM_HD int ceil_div(int v, int m) { return (v + m - 1) / m; }

AWQGEMM_HD int padded_n(int n) { return round_up(n, kTileN); }
AWQGEMM_HD int padded_k(int k) { return round_up(k, kTileK); }
AWQGEMM_HD int padded_groups(int k, int group) { return ceil_div(padded_k(k), group); }

}  // namespace awqgemm
