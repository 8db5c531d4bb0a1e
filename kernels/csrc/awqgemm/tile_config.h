// Launch shape of the tensor-core kernels, chosen by the dispatcher.
#pragma once

#include "packed_layout.h"

namespace awqgemm {

enum class KernelKind : int {
  kKSplit = 0,   // gemm_tc_kernel: warps split K (decode, and every family)
  kXShared = 1,  // gemm_xs_kernel: warps split N and share activations (sm80, M > 16)
  kWgmma = 2,    // gemm_wg_kernel (v9): warpgroup MMA, weights as register A (sm90a), gathers x itself
  kWTile = 3,    // gemm_wt_kernel: weight, scale and x tiles staged per block in shared memory (sm80, M > 16)
  kWgmmaWs = 4,  // gemm_ws_kernel (v11.1): warp-specialized persistent wgmma, x staged by TMA-ready tiles (sm90a)
};

// Most K splits of any plan: the planners stop there, decode_plan refuses more, and the reduction
// kernel has straight-line code (one 16-byte load per split in registers) for each count up to it.
constexpr int kMaxKSplits = 16;

// Pipeline depth of the K-split kernel. Register-staged pipelines (sm70/75)
// get shallower as the activation tile grows, to stay clear of spills; the
// cp.async rings (sm80+) are 3 deep (2 for MT = 4): at 30 KiB per 4-warp block,
// 7 blocks fit an SM, which hides more latency than a 4th stage with fewer
// resident warps.
AWQGEMM_HD constexpr int pipeline_stages(int mt, bool async_ring) { return mt >= 4 ? 2 : (async_ring ? 3 : 4); }

// Shape of the x-shared kernel: 4 warps x 2 column tiles. Its ring is 4 deep
// for 32-token blocks and 3 deep for 64-token ones, and 64-token blocks are
// held to 128 registers: that is what lets 4 blocks (16 warps) share an SM --
// at 4 stages and 162 registers only 3 fit, and ncu showed the tensor pipe at
// 28 % with 9.7 warps resident (docs/perf-notes.md, v8).
constexpr int kXsWarps = 4;
constexpr int kXsNT = 2;
AWQGEMM_HD constexpr int xs_stages(int mt) { return mt >= 8 ? 3 : 4; }
AWQGEMM_HD constexpr int xs_min_blocks(int mt) { return mt >= 8 ? 4 : 5; }

// Shapes of the weight-tile kernel (gemm_wtile.cuh): 8 warps, 128 columns
// (4 warps x 2 column tiles) per block. Block tokens BM = 8 mt: 32 and 64 run
// two warps per column strip, each on half of every 64-k step (WK = 2); 128
// runs two warps per strip on 64 tokens each (WM = 2). Ring depth 4.
constexpr int kWtWarps = 8;
constexpr int kWtTiles = 8;  // 16-column tiles per block
constexpr int kWtStages = 4;

// Shape of the wgmma kernel: 8 warps (2 warpgroups) x one 16-column tile each,
// BM = 8 mt tokens. Ring depth: at BM = 64 and 128 two blocks share an SM (the
// latency hiding comes from the other block as much as from the ring); 6 x 14 KiB
// stages at BM = 64, 5 x 22 KiB at BM = 128 fill the 227 KiB between them.
// BM = 256 (m64n256: 128 accumulators per thread) runs one block per SM with
// 5 x 38 KiB stages: twice the tokens per dequantized weight and per barrier.
constexpr int kWgNT = 8;
AWQGEMM_HD constexpr int wg_stages(int bm) { return bm >= 128 ? 5 : 6; }
AWQGEMM_HD constexpr int wg_min_blocks(int bm) { return bm >= 256 ? 1 : 2; }

// The wgmma kernels read x in the k order of packed layout 1's A fragments.
// v11.1 stages x in that order (tile-major) through the workspace, at most
// this many bytes at a time: longer x goes in row chunks (ws_chunk_rows); where
// not even 256 rows fit (K > 65536) the v9 kernel gathers 4-byte pairs itself.
constexpr int64_t kWgMaxStagedXBytes = int64_t{32} << 20;
AWQGEMM_HD constexpr int64_t wg_staged_x_bytes(int m, int k) {
  return (static_cast<int64_t>(m) * ((k + kTileK - 1) / kTileK * kTileK) * 2 + 255) / 256 * 256;
}

// Shape of the warp-specialized persistent wgmma kernel (v11, gemm_wgws_sm90a.cuh):
// 2 consumer warpgroups x 64 columns = 128 columns (8 weight tiles) per work
// unit, BM = 64/128/256 tokens, plus a producer warpgroup of which one warp
// moves whole stages with cp.async.bulk: 12 warps, one block per SM. Registers
// are handed out per warpgroup (a 9-warp block was compiled to 168 registers,
// 65536 / 384, and spilled at BM = 256), so the producer warpgroup gives
// its registers up (setmaxnreg 40) and the consumers take them (232):
// 128 x 40 + 256 x 232 <= 64 Ki. Stage = the x tile
// (BM rows of 128 swizzled bytes) + 8 weight tiles (4 KiB) + 2 (scale, zero)
// rows (1 KiB); the ring is as deep as ~190 KiB allows.
constexpr int kWsConsumerWarps = 8;
constexpr int kWsThreads = 32 * (kWsConsumerWarps + 4);
constexpr int kWsProducerRegs = 40;
constexpr int kWsConsumerRegs = 232;
// TileConfig::four_wg (BM 48 and 64, x through the map, no stream-K): four consumer warpgroups of one
// weight tile per warp (the block still 16 tiles, 256 columns), which the latency-bound consumers of
// those tiles measured faster with (dispatch.cu's plan): 20 warps, 96 registers each at launch
// (65536 / 640 rounded down to 8), the producer warpgroup down to 32, the consumers up to 112:
// 128 x 32 + 512 x 112 = 640 x 96.
AWQGEMM_HD constexpr int ws_threads(int cwg) { return 32 * (4 * cwg + 4); }
// The tiles that run four consumer warpgroups (with x through the map, without stream-K).
AWQGEMM_HD constexpr bool ws_four_wg_tile(int bm) { return bm == 48 || bm == 64; }
AWQGEMM_HD constexpr int ws_producer_regs(int cwg) { return cwg == 2 ? kWsProducerRegs : 32; }
AWQGEMM_HD constexpr int ws_consumer_regs(int cwg) { return cwg == 2 ? kWsConsumerRegs : 112; }
// Registers the producer and consumer warpgroups hold after setmaxnreg, and what a launch of
// ws_threads(cwg) threads gets (65536 / threads rounded down to 8): the first must fit the second.
AWQGEMM_HD constexpr int ws_pool_regs(int cwg) {
  return 128 * ws_producer_regs(cwg) + 128 * cwg * ws_consumer_regs(cwg);
}
AWQGEMM_HD constexpr int ws_launch_regs(int cwg) { return ws_threads(cwg) * ((65536 / ws_threads(cwg)) & ~7); }
// Weight tiles per consumer warp: 2 up to BM = 64 (a 256-column block: at 128 columns a
// 64-token stage carries as many x bytes as weight bytes, and ncu found the k-tile
// waiting on it; dispatch.cu's plan_wgws has the measurements), else 1 (128 columns).
// BM = 32 and 48 (m64n32k16 / m64n48k16) serve M <= 48 (dense) and grouped experts of 17-48 rows.
AWQGEMM_HD constexpr int ws_ntw(int bm) { return bm <= 64 ? 2 : 1; }
// v11.1's tile height for `rows` (<= 64) tokens: the smallest of 32, 48, 64 that holds them.
AWQGEMM_HD constexpr int ws_short_tile(int rows) { return rows <= 32 ? 32 : rows <= 48 ? 48 : 64; }
AWQGEMM_HD constexpr int ws_stage_bytes(int bm) { return bm * 128 + ws_ntw(bm) * (8 * 512 + 2 * 512); }
// As many stages as ~225 KiB of shared memory hold (14 / 16 / 18 KiB stages at BM = 32 / 48 / 64); from
// 128 tokens ~170-190 KiB in flight: 8 / 7 / 6 / 5 / 5 stages of 21 / 25 / 29 / 33 / 37 KiB at BM = 128 /
// 160 / 192 / 224 / 256.
AWQGEMM_HD constexpr int ws_stages(int bm) {
  return bm >= 224 ? 5 : bm >= 192 ? 6 : bm >= 160 ? 7 : bm >= 128 ? 8 : bm >= 64 ? 12 : bm >= 48 ? 13 : 16;
}
// x is staged tile-major ([k-tile][M][64], rows pre-swizzled) in the workspace,
// at most kWgMaxStagedXBytes of it: larger problems run as chunks of this many
// rows (a multiple of 256), each staged and multiplied in turn.
AWQGEMM_HD constexpr int ws_chunk_rows(int m, int k) {
  const int64_t row_bytes = static_cast<int64_t>((k + kTileK - 1) / kTileK * kTileK) * 2;
  const int64_t fit = kWgMaxStagedXBytes / row_bytes / 256 * 256;
  return fit >= m ? m : static_cast<int>(fit);
}

// Grouped (MoE) problems on v11.1 (experts of more than 32 rows on the sm90 family). A small
// kernel lists the token tiles -- each inside one expert's rows, at most grouped_grid_rows(R, BM,
// E) of them (problem.h) -- as WsGroupTile entries at the front of the workspace; x is staged per
// tile at staged row tile * BM, so every tile starts on a swizzle atom row however the experts' rows
// fall, and tiles go in chunks of at most kWgMaxStagedXBytes of staged x (ws_group_chunk_tiles).
struct alignas(16) WsGroupTile {
  int e, m0, m_end, unused;  // expert (-1: rows of no expert, stored as zeros), rows [m0, min(m0 + BM, m_end))
};
AWQGEMM_HD constexpr int ws_group_chunk_tiles(int bm, int k) {
  const int64_t tile_bytes = static_cast<int64_t>(bm) * ((k + kTileK - 1) / kTileK * kTileK) * 2;
  return static_cast<int>(kWgMaxStagedXBytes / tile_bytes);
}
AWQGEMM_HD constexpr int64_t ws_group_table_bytes(int tiles) {
  return (static_cast<int64_t>(tiles) * static_cast<int64_t>(sizeof(WsGroupTile)) + 255) / 256 * 256;
}
// Its workspace: the table of `tiles` entries, then one launch's staged x (at most a chunk of tiles).
AWQGEMM_HD constexpr int64_t ws_group_workspace_bytes(int tiles, int bm, int k) {
  const int per_launch = tiles < ws_group_chunk_tiles(bm, k) ? tiles : ws_group_chunk_tiles(bm, k);
  return ws_group_table_bytes(tiles) + wg_staged_x_bytes(per_launch * bm, k);
}

// Stream-K tail of v11.1 (TileConfig::stream_k, chosen by plan_wgws). The
// persistent grid walks whole work units round-robin while every CTA still
// gets one; the remaining units % CTAs would run as a partial round with the
// other SMs idle (ncu, H200: 224 units of a gate_up at M = 256 ran as 2 rounds
// on 132 SMs for 1.7 rounds of work). Their k-tiles are instead dealt out in
// order, evenly, to tail_ctas CTAs (>= kWsMinTailTiles each). A CTA's tail
// range is contiguous, so only its first piece can start inside a unit (it
// parks its fp32 partials in the CTA's slot of the workspace and raises the
// CTA's flag) and only its last can start a unit without finishing it: the
// owner, which adds the slots of the CTAs after it holding the rest of that
// unit, then stores. Owners wait only on higher CTAs, for pieces those
// processed first: no cycle, and by then usually long done.
constexpr int kWsMinTailTiles = 8;
enum WsRole : int { kWsWhole = 0, kWsOwner = 1, kWsPart = 2 };
struct WsPiece {
  int unit, kt0, n_k, role;  // k-tiles [kt0, kt0 + n_k) of the unit's
};
// 32-bit throughout: the tail holds fewer units than CTAs (<= 1024) of at most
// 1024 k-tiles (K <= 65536 on this kernel), so c x tail_tiles < 2^30 (64-bit
// divisions compiled to calls in the kernel).
struct WsSchedule {
  int units = 0, unit_tiles = 0, ctas = 0, full = 0, tail_ctas = 0, tail_tiles = 0;
  AWQGEMM_HD WsSchedule(int units_, int unit_tiles_, int ctas_, bool stream_k)
      : units(units_), unit_tiles(unit_tiles_), ctas(ctas_) {
    full = stream_k ? units / ctas * ctas : units;
    tail_tiles = (units - full) * unit_tiles;
    const int by_size = tail_tiles / kWsMinTailTiles;
    tail_ctas = tail_tiles == 0 ? 0 : by_size < 1 ? 1 : by_size < ctas ? by_size : ctas;
  }
  // First tail k-tile of tail CTA c (c = tail_ctas: the end).
  AWQGEMM_HD int tail_begin(int c) const { return c * tail_tiles / tail_ctas; }
  // The tail CTA whose range holds tail k-tile i.
  AWQGEMM_HD int tail_cta_of(int i) const {
    int c = i * tail_ctas / tail_tiles;
    while (c + 1 < tail_ctas && tail_begin(c + 1) <= i) ++c;
    while (c > 0 && tail_begin(c) > i) --c;
    return c;
  }
};
// The pieces of CTA `cta`, in the order its producer and consumers both walk them.
// tail_only: from the tail on (the consumers walk the whole units, cta, cta +
// ctas, ... below full, in a loop of their own: gemm_ws_kernel says why).
struct WsCursor {
  const WsSchedule& s;
  int u, it, end;
  AWQGEMM_HD WsCursor(const WsSchedule& sched, int cta, bool tail_only = false)
      : s(sched), u(tail_only ? sched.full : cta), it(0), end(0) {
    if (cta < s.tail_ctas) {
      it = s.tail_begin(cta);
      end = s.tail_begin(cta + 1);
    }
  }
  AWQGEMM_HD bool next(WsPiece& pc) {
    if (u < s.full) {
      pc = {u, 0, s.unit_tiles, kWsWhole};
      u += s.ctas;
      return true;
    }
    if (it >= end) return false;
    const int tu = it / s.unit_tiles;
    const int k0 = it - tu * s.unit_tiles;
    const int left = end - it;
    const int k1 = left < s.unit_tiles - k0 ? k0 + left : s.unit_tiles;
    pc = {s.full + tu, k0, k1 - k0, k0 != 0 ? kWsPart : k1 == s.unit_tiles ? kWsWhole : kWsOwner};
    it += k1 - k0;
    return true;
  }
};
// CTAs of the grid: one per unit up to the SMs; a stream-K plan with fewer
// units than SMs spreads their k-tiles over up to all of them.
AWQGEMM_HD int ws_grid(int units, int unit_tiles, int sms, bool stream_k) {
  if (!stream_k || units >= sms) return units < sms ? units : sms;
  const int64_t by_size = static_cast<int64_t>(units) * unit_tiles / kWsMinTailTiles;
  return by_size < units ? units : by_size < sms ? static_cast<int>(by_size) : sms;
}
// Workspace of the stream-K tail, after the staged x: a flag per CTA (256-byte
// aligned), then a slot of BM x (the block's nt column tiles x 16) fp32 partials per CTA.
AWQGEMM_HD int64_t ws_flag_bytes(int ctas) { return (static_cast<int64_t>(ctas) * 4 + 255) / 256 * 256; }
AWQGEMM_HD int64_t ws_stream_k_bytes(int ctas, int bm, int nt) {
  return ws_flag_bytes(ctas) + static_cast<int64_t>(ctas) * bm * nt * 16 * 4;
}

// Kernel argument bits saying how the fused kernels take part in programmatic
// dependent launch (see pdl_wait in gemm_tile.cuh).
constexpr int kPdlLaunched = 1;      // launched with the PDL attribute: wait before reading x
constexpr int kPdlEarlyTrigger = 2;  // let the next kernel in after the main loop (else at exit)

struct TileConfig {
  KernelKind kind = KernelKind::kKSplit;
  // Defaults matter: a dense plan leaves the tile unset, and its plan code must
  // still decode (plan_info of a dense plan once raised "not a plan code").
  int mt = 1;      // 8-token MMA tiles per block
  int nt = 1;      // 16-column tiles per block
  int kwarps = 1;  // warps per block, splitting the block's K slice (4, 8 or 16)
  int splits = 1;  // blocks splitting K
  int pdl_flags = 0;  // kPdl* bits: launched as a programmatic dependent (sm90+), early trigger
  bool stream_k = false;  // kWgmmaWs with one K split: the stream-K tail above
  bool tma_x = false;     // kWgmmaWs, dense: x through a tensor map, not staged
  bool four_wg = false;   // with tma_x, BM 48 / 64, no stream-K: four consumer warpgroups, 640 threads
};

}  // namespace awqgemm
