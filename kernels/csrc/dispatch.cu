#include "awqgemm/dispatch.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "awqgemm/families.h"
#include "awqgemm/packed_layout.h"

namespace awqgemm {

constexpr int kDefaultInflightKiB = 24;

DeviceInfo device_info(int device) {
  static std::mutex mu;
  static std::vector<DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0) return {};
  if (static_cast<size_t>(device) >= cache.size()) cache.resize(device + 1);
  DeviceInfo& info = cache[device];
  if (info.capability == 0) {
    int major = 0, minor = 0, sms = 0, prev = -1;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaGetDevice(&prev) != cudaSuccess) {
      cudaGetLastError();
      return {};
    }
    // Function attributes are per device: query on `device`, then restore.
    if (prev != device && cudaSetDevice(device) != cudaSuccess) {
      cudaGetLastError();
      return {};
    }
    info.ptx_arch = compiled_ptx_arch();
    if (prev != device) cudaSetDevice(prev);
    info.capability = 10 * major + minor;
    info.sm_count = sms;
  }
  return info;
}

bool have_sm90a() {
#if defined(AWQGEMM_HAS_SM90A)
  return true;
#else
  return false;
#endif
}

Family choose_family(Family requested, int capability, DType dtype, std::string* why) {
  Family f = requested;
  if (f == Family::kAuto) {
    // sm_90a code runs on 9.0 only (arch-specific features are not forward compatible).
    if (capability == 90 && have_sm90a()) f = Family::kSm90;
    else if (capability >= 80) f = Family::kSm80;
    else if (capability >= 75) f = Family::kSm75;
    else if (capability >= 70) f = Family::kSm70;
    else {
      *why = "awqgemm needs compute capability 7.0 or newer, this GPU has " + std::to_string(capability / 10) + "." +
             std::to_string(capability % 10);
      return Family::kAuto;
    }
  }
  const int need = static_cast<int>(f);
  if (capability < need) {
    *why = "kernel family sm" + std::to_string(need) + " needs compute capability " + std::to_string(need / 10) + "." +
           std::to_string(need % 10) + ", this GPU has " + std::to_string(capability / 10) + "." +
           std::to_string(capability % 10);
    return Family::kAuto;
  }
  if (f == Family::kSm90 && (capability != 90 || !have_sm90a())) {
    *why = have_sm90a() ? "kernel family sm90 (wgmma) runs on compute capability 9.0 only"
                        : "kernel family sm90 (wgmma) is not in this build (it needs CUDA_ARCHITECTURES with 90a-real)";
    return Family::kAuto;
  }
  if (dtype == DType::kBFloat16 && f != Family::kSm80 && f != Family::kSm90) {
    *why = "bfloat16 needs the sm80 kernel family (compute capability 8.0+); use float16 on this GPU";
    return Family::kAuto;
  }
  return f;
}

int layout_for(Family family) { return family == Family::kSm70 ? kLayoutVolta884 : kLayoutTc16x64; }

int64_t partials_offset_bytes(const Plan& plan, int M, int K) {
  return plan.tile.kind == KernelKind::kWgmmaWs ? wg_staged_x_bytes(ws_chunk_rows(M, K), K) : 0;
}

int64_t fused_workspace_bytes(const Plan& plan, int M, int N, int K, int sms) {
  const int64_t partials = plan.tile.splits > 1 ? static_cast<int64_t>(plan.tile.splits) * M * N * 4 : 0;
  const int64_t stream_k = plan.tile.stream_k ? ws_stream_k_bytes(sms, 8 * plan.tile.mt, plan.tile.nt) : 0;
  return partials_offset_bytes(plan, M, K) + partials + stream_k;
}

int64_t grouped_workspace_bytes(const Plan& plan, int R, int E, int N, int K) {
  if (plan.tile.kind != KernelKind::kWgmmaWs) return fused_workspace_bytes(plan, R, N, K, /*sms: no stream-K*/ 0);
  const int bm = 8 * plan.tile.mt;
  return ws_group_workspace_bytes(grouped_grid_rows(R, bm, E), bm, K);
}

int dense_chunk_columns(int N, int K, int dtype_bytes) {
  const int64_t fit = kMaxDenseChunkBytes / (static_cast<int64_t>(K) * dtype_bytes);
  // Whole 128-column blocks keep every chunk's GEMM on cuBLAS's full tiles.
  const int64_t cols = fit >= N ? N : std::max<int64_t>(128, fit / 128 * 128);
  return static_cast<int>(std::min<int64_t>(cols, N));
}

int64_t encode_plan(const Plan& plan) {
  const TileConfig& t = plan.tile;
  const int64_t fields[8] = {static_cast<int>(plan.family), static_cast<int>(t.kind), t.mt, t.nt, t.kwarps, t.splits,
                             t.pdl_flags,
                             (plan.dense ? 1 : 0) | (plan.reduce_pdl ? 2 : 0) | (t.stream_k ? 4 : 0) |
                                 (t.tma_x ? 8 : 0) | (t.four_wg ? 16 : 0)};
  int64_t code = 0;
  for (int i = 7; i >= 0; --i) code = (code << 8) | (fields[i] & 0xFF);
  return code;
}

bool decode_plan(int64_t code, Plan* plan) {
  int f[8];
  for (int i = 0; i < 8; ++i) f[i] = static_cast<int>((code >> (8 * i)) & 0xFF);
  const bool family_ok = f[0] == 70 || f[0] == 75 || f[0] == 80 || (f[0] == 90 && have_sm90a());
  if (!family_ok || f[1] > 4 || f[2] < 1 || f[3] < 1 || f[4] < 1 || f[5] < 1 || f[5] > kMaxKSplits || f[6] > 3 ||
      f[7] > 31) {
    return false;
  }
  // Stream-K exists only for v11.1 with one K split.
  if ((f[7] & 4) != 0 && (f[1] != static_cast<int>(KernelKind::kWgmmaWs) || f[5] != 1)) return false;
  // x through a tensor map: v11.1, fused.
  if ((f[7] & 8) != 0 && (f[1] != static_cast<int>(KernelKind::kWgmmaWs) || (f[7] & 1) != 0)) return false;
  // Four consumer warpgroups: x through the map, no stream-K, tiles of 48 or 64 tokens, 20 warps.
  if ((f[7] & 16) != 0 && ((f[7] & 12) != 8 || !ws_four_wg_tile(8 * f[2]) || f[4] != ws_threads(4) / 32)) return false;
  if ((f[7] & 16) == 0 && f[1] == static_cast<int>(KernelKind::kWgmmaWs) && f[4] != kWsThreads / 32) return false;
  plan->family = static_cast<Family>(f[0]);
  plan->tile.kind = static_cast<KernelKind>(f[1]);
  plan->tile.mt = f[2];
  plan->tile.nt = f[3];
  plan->tile.kwarps = f[4];
  plan->tile.splits = f[5];
  plan->tile.pdl_flags = f[6];
  plan->dense = (f[7] & 1) != 0;
  plan->reduce_pdl = (f[7] & 2) != 0;
  plan->tile.stream_k = (f[7] & 4) != 0;
  plan->tile.tma_x = (f[7] & 8) != 0;
  plan->tile.four_wg = (f[7] & 16) != 0;
  return true;
}

namespace {

// A tuning knob from the environment, read once so plans stay deterministic
// within a process; `fallback` unless it is an integer in [lo, hi]. The Python
// package checks the same names and ranges at import (awqgemm/_knobs.py) and
// raises on a malformed value, so the fallback only guards direct C++ use.
int env_knob(const char* name, int fallback, int lo, int hi) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  while (end != nullptr && (*end == ' ' || *end == '\t')) ++end;
  const bool parsed = end != env && end != nullptr && *end == '\0';
  return parsed && v >= lo && v <= hi ? static_cast<int>(v) : fallback;
}

// Weight bytes to keep in flight per SM. Little's law for ~3 TB/s and ~1 us
// of latency over 132 SMs gives ~24 KiB; the measured best is in
// docs/perf-notes.md. AWQGEMM_INFLIGHT_KIB overrides it.
int inflight_bytes_per_sm() {
  static const int bytes = env_knob("AWQGEMM_INFLIGHT_KIB", kDefaultInflightKiB, 1, 4096) * 1024;
  return bytes;
}

// Most K splits of the x-shared kernel (AWQGEMM_XS_MAX_SPLITS overrides).
// Its fp32 partials grow with M (splits x M x N x 4 bytes, written and read
// again), so past 8 splits they cost more than the extra parallelism buys:
// capping 16 -> 8 measured 5 % faster at M = 64 (geomean of 16 shapes; K = 4096
// layers up to 22 %), neutral at M = 32 (docs/perf-notes.md, v8).
constexpr int kXsMaxSplits = 8;
int xs_max_splits() {
  static const int splits = env_knob("AWQGEMM_XS_MAX_SPLITS", kXsMaxSplits, 1, kMaxKSplits);
  return splits;
}

// Programmatic dependent launch on sm90+: AWQGEMM_PDL=0 turns it off. The
// next kernel is let in after the main loop only when it is our own split-K
// reduction, otherwise at block exit: letting the *next GEMM* in early measured
// up to 23 % slower where its single-wave grid (~2 blocks per SM) got placed
// unevenly around still-resident blocks (docs/perf-notes.md, v8).
bool pdl_enabled() {
  static const bool on = env_knob("AWQGEMM_PDL", 1, 0, 1) == 1;
  return on;
}

// The balance rule below (AWQGEMM_BALANCE=0 turns it off, to measure it).
bool balance_enabled() {
  static const bool on = env_knob("AWQGEMM_BALANCE", 1, 0, 1) == 1;
  return on;
}

// From this many tokens on, dequantizing into a dense weight and running the
// caller's dense GEMM (cuBLAS through torch) beats the fused kernels. sm80:
// measured on the H100 (fused wins on 30/34 shapes at M = 128, loses on 30/34
// at 256; docs/perf-notes.md). sm75/sm70: not measurable here (no T4/V100),
// chosen from the floors -- the W4 floor stays HBM-bound to M ~ 37-60 there --
// and Volta's 16 x 32 tiles.
int dense_min_m(Family family) {
  switch (family) {
    case Family::kSm70: return 64;
    case Family::kSm75: return 128;
    default: return 256;
  }
}

// sm90 family, auto path: v11.1 (plan_wgws) or the sm80 rules' choice (the K-split / x-shared kernels
// below 256 tokens, dequantize + cuBLAS from 256 on). Each band was fitted on an H200 run of all 32 layer
// shapes with v11.1 forced beside the rule's other choice (benchmarks/results/, docs/perf-notes.md):
// - <= 16 tokens: the sm80 rules' split-K decode plans (v11.1 in a 32-token tile lost 1.01-2.03x on 30 of
//   34 shapes; h200-2026-11-29-switches2).
// - 17-32: v11.1 on layers of K > 2048 and >= 25 Mi weights (0.80-0.96x the x-shared kernel's time); it
//   ties or loses on the smaller ones (0.97-1.24x: Llama-3-8B qkv / o, the TP2 qkv / o layers).
// - 33-63: v11.1 where K > 2048; it loses only on K = 1792 / 2048 (1.04-1.06x; h200-2026-11-29-xs-vs-wg).
//   Its tile is the smallest of 32, 48 and 64 tokens that holds M (m64n32k16 / m64n48k16 / m64n64k16
//   wgmmas): 0.87x the 64-token tile's time at 16-32 tokens, 0.94x at 48 (switches2, all 34 points).
// - 64-255: v11.1 on every layer (the weight-tile kernel, the rule's other choice at 129-255, took
//   1.29-2.71x its time at 192 tokens; h200-2026-11-29-refit-check).
// - 256-384: v11.1 where K > 2048, on deep layers (K >= 1.75 N: the long K fills a small grid through
//   K splits, and dequantizing pays a whole extra pass over a large weight) and where its grid (N/128 x
//   M/128 blocks) holds at least half a block per SM; dequantize + cuBLAS on the shallow layers of
//   smaller grids. Of the 32 shapes that is Llama-3-8B and Qwen2.5-7B TP2 o at 256 tokens (v11.1 1.05x /
//   1.20x there); at 320-384 their grids pass the mark and v11.1 takes them: 1.07-1.17x at three of the
//   four points, this band's worst (h200-2026-11-30-rule-256-1024).
// - 385-1024: v11.1 on every layer. h200-2026-11-30-rule-256-1024 (v11.1 and dequantize + cuBLAS timed at
//   every point of 256-1024 tokens): this rule's choice over the better of the two 1.000 / 1.010 / 1.002 /
//   1.002 / 1.002 / 1.011 (geomean) at 256 / 320 / 384 / 512 / 768 / 1024 tokens, where the rule before
//   (v11.1 from >= 25 Mi weights or 1.5 blocks per SM at 257-512, 1.5 blocks at 513-1024) comes to 1.004 /
//   1.062 / 1.042 / 1.029 / 1.072 / 1.021; worst Qwen2.5-7B TP2 qkv (1.08x at 512, 1.17x at 1024) and TP1
//   qkv at 1024 (1.12x). The 257-512 part was fitted on h200-2026-11-29-regroup-4wg and held in this run;
//   768 and 1024 are fitted on this run alone.
// - Above 1024: dequantize + cuBLAS (at 2048 v11.1 won only on deep layers and the widest gate_up when
//   last compared, 2026-11-28, before x through a tensor map and the 160-224-token tiles).
constexpr int64_t kLargeLayerWeights = int64_t{25} << 20;

bool wgmma_auto(int M, int N, int K, int sms) {
  if (M <= 16 || M > 1024) return false;
  if (M <= 32) return K > 2048 && static_cast<int64_t>(N) * K >= kLargeLayerWeights;
  if (M < 64) return K > 2048;
  if (M < 256 || M > 384 || K > 2048 || 4 * static_cast<int64_t>(K) >= 7 * static_cast<int64_t>(N)) return true;
  return 2 * ceil_div(N, kWgNT * kTileN) * ceil_div(M, 128) >= sms;
}

// Largest split-K workspace the wgmma plan may ask for (issue: <= 64 MiB extra per call).
constexpr int64_t kMaxWorkspaceBytes = int64_t{64} << 20;

// The v9 wgmma kernel's tile (dense problems with K > 65536, and the grouped
// work in progress): 8 mt tokens x 8 column tiles per block, one warp per
// column tile (none split K); K split until `blocks` x splits covers the SMs,
// keeping >= 4 k-tiles per split and the fp32 partials of rows x N within
// kMaxWorkspaceBytes.
void plan_wg_v9(TileConfig& t, int mt, int blocks, int sms, int ktiles, int rows, int N) {
  t.kind = KernelKind::kWgmma;
  t.mt = mt;
  t.nt = kWgNT;
  t.kwarps = kWgNT;
  t.splits = 1;
  while (t.splits < kMaxKSplits && blocks * t.splits < sms && ktiles / (t.splits + 1) >= 4 &&
         static_cast<int64_t>(t.splits + 1) * rows * N * 4 <= kMaxWorkspaceBytes) {
    ++t.splits;
  }
}

// PDL flags and workspace, once kernel, tile and splits are chosen. A kernel
// may be launched as a programmatic dependent only if the code that runs was
// compiled with griddepcontrol: the wgmma kernel always is (sm_90a), the
// arch-generic ones only with PTX for sm90+ (JIT from older PTX would run them
// without the wait). The split-K reduction is arch-generic.
void finish_plan(Plan& plan, const DeviceInfo& dev, bool kernel_has_wait, int M, int N, int K) {
  TileConfig& t = plan.tile;
  // Every kernel gives each split ceil(ktiles / splits) k-tiles: fewer splits with the same slice
  // length drop trailing splits that would get none (64 k-tiles in 9 splits: 8 of 8, and an empty 9th
  // whose blocks would only write zero partials for the reduction to read).
  const int ktiles = padded_k(K) / kTileK;
  t.splits = ceil_div(ktiles, ceil_div(ktiles, t.splits));
  const bool pdl = dev.capability >= 90 && pdl_enabled();
  t.pdl_flags = pdl && kernel_has_wait ? kPdlLaunched : 0;
  plan.reduce_pdl = pdl && dev.ptx_arch >= 90;
  if (t.pdl_flags != 0 && plan.reduce_pdl && t.splits > 1) t.pdl_flags |= kPdlEarlyTrigger;
  plan.workspace_bytes = fused_workspace_bytes(plan, M, N, K, dev.sm_count > 0 ? dev.sm_count : 80);
}

// Split K across blocks until enough bytes are in flight, keeping >= min_tiles
// k-tiles per split (per warp, for the K-split kernel) and <= kMaxKSplits splits.
int choose_splits(int ktiles, int min_tiles, int64_t want, int64_t per_split_inflight) {
  int splits = 1;
  while (splits < kMaxKSplits && per_split_inflight * splits < want && ktiles / (splits + 1) >= min_tiles) ++splits;
  return splits;
}

// sm80 family, fused path: the weight-tile kernel instead of the x-shared one
// where it measured faster (H200, sm80 forced, 16 TP1 layers, fp16 g128;
// benchmarks/results/h200-2026-11-28-wtile-v2.txt, time wt / x-shared):
// above 64 tokens (BM = 128 tiles; geomean 0.95 at M = 128 with 12/16 wins,
// 0.91 at 256, 0.91 at 512 -- the last two reached only when forced or on
// sm90's small grids, below the dense threshold otherwise), and at 17..32
// tokens on layers with K >= 5120 (0.79..1.01 there, geomean 0.93; the
// K <= 4096 layers lost up to 1.13x). At 33..64 tokens the x-shared kernel
// stays (wt 1.03x, 5/16 wins).
bool wtile_auto(int M, int K) { return M > 64 || (M > 16 && M <= 32 && K >= 5120); }

// The weight-tile kernel's tile and K split. Block tokens: 32, 64 or 128
// (the smallest that covers M up to 64; 128 above, which reads each weight
// byte once per 128 tokens). K split: the smallest that fills the two
// resident blocks per SM to >= 80 % of a whole number of waves (fp32 partials
// cost splits x M x N x 8 bytes of traffic, so no more than that), at most 8,
// >= 8 k-tiles per split, partials within kMaxWorkspaceBytes.
void plan_wtile(Plan& plan, int sms, int M, int N, int K) {
  TileConfig& t = plan.tile;
  t.kind = KernelKind::kWTile;
  t.mt = M <= 32 ? 4 : M <= 64 ? 8 : 16;
  t.nt = kWtTiles;
  t.kwarps = kWtWarps;
  const int ktiles = padded_k(K) / kTileK;
  const int blocks = ceil_div(padded_n(N) / kTileN, kWtTiles) * ceil_div(M, 8 * t.mt);
  const int64_t slots = 2 * static_cast<int64_t>(sms);
  auto fill = [&](int s) {
    const int64_t b = static_cast<int64_t>(blocks) * s;
    return static_cast<double>(b) / (static_cast<double>((b + slots - 1) / slots) * slots);
  };
  t.splits = 1;
  while (fill(t.splits) < 0.8 && t.splits < 8 && ktiles / (t.splits + 1) >= 8 &&
         static_cast<int64_t>(t.splits + 1) * M * N * 4 <= kMaxWorkspaceBytes) {
    ++t.splits;
  }
}

// The warp-specialized persistent wgmma kernel (v11.1): tokens per unit (BM), K
// split or stream-K tail, from a cost model in SM cycles. Blocks (one per SM)
// walk nblocks x mblocks x splits work units in ceil(units / SMs) rounds; a
// unit costs, per 64-k tile, the k-tile time ncu measured (H200 at 1.29 GHz,
// 13:25 run: 646 cycles at BM 64, ~930 at 128, 1,323 at 256, i.e. ~450 +
// 3.4 BM: the consumers' per-tile latency chain, not the MMA rate, sets it)
// plus an epilogue of ~8 BM + 500. A K split adds the reduction launch
// (~3000) and its fp32 partials, written and read (8 M N splits bytes at
// ~2000 bytes/cycle for the whole GPU) -- partial traffic is what made the v9
// kernel lose on small grids. The stream-K tail (one split) runs the whole
// rounds, then deals the rest's k-tiles out over the grid (WsSchedule).
// BM: 32, 48 or 64 up to 64 tokens (the smallest holding M), else 128, 160, 192, 224 or 256 (equal
// cost: the larger, which dequantizes each weight for more tokens). The mid tiles keep a 129-255-token
// problem from computing 256 rows: H200, v11.1 forced, 34 TP1/TP2 points per M
// (h200-2026-11-29-mid-tiles; with / without them, geomean): 0.76x the time at 129 tokens, 0.77x at
// 160, 0.85x at 192, 0.93x at 200-224, 0.84x at 300, 0.91x at 384 (two 192-token tiles), 1.00x at 256
// and 512 (the same plans). Up to 64 tokens a block covers
// 256 columns (nt = 16, each consumer warp owning two weight tiles): a 64 x 128
// block reads as many x bytes as weight bytes per stage, and ncu found its
// k-tile waiting on the stage. Its k-tile is costed at 1.4x the 128-column
// one's for twice the work (not fitted: the plans it gives won everywhere).
// H200, 18 TP1 shapes, wgmma kernel forced, same run
// (benchmarks/results/h200-2026-11-28-uniform.txt): 0.78x the 128-column
// variant's time at M = 16, 0.86x at 64 (geomean; 0.59-0.97x, faster at all 36
// points); Llama-3-8B batch-64 decode in vLLM 5.72 -> 5.32 ms per step.
// Limits: >= 4 k-tiles per split, staged x + partials (or the stream-K slots)
// within kMaxWorkspaceBytes, no split when the rows go in chunks (the partials
// are indexed over the whole M). Returns false, changing nothing, where the
// staged x of even 256 rows would not fit (K > 65536): the caller takes the v9
// kernel, which gathers x.
// H200 A/B of this planner against the same cost model without the stream-K
// tail and with the MMA budget max(4 BM, 256) as the k-tile time
// (benchmarks/results/h200-2026-11-28-stream-k.txt, 18 TP1 shapes, wgmma
// kernel forced): geomean 0.95x the time at M = 64, 0.97x at 128, 0.84x at 256,
// 0.90x at 512, 0.88x at 1024; down to 0.63x where a partial round idled most
// SMs (Llama-2-70B qkv at 256), before the rule against > 3 pieces below.
bool plan_wgws(Plan& plan, int sms, int M, int N, int K) {
  TileConfig& t = plan.tile;
  const int chunk = ws_chunk_rows(M, K);
  if (chunk < std::min(M, 256)) return false;
  t.kind = KernelKind::kWgmmaWs;
  // Up to 64 tokens BM is the smallest of 32, 48, 64 that holds M.
  const int small_bm = ws_short_tile(M);
  const int ntw = ws_ntw(M <= 64 ? small_bm : 128);
  t.nt = kWgNT * ntw;
  t.kwarps = kWsThreads / 32;  // warps per block: 8 consumers + the producer warpgroup
  const int nblocks = ceil_div(padded_n(N) / kTileN, kWgNT * ntw);
  const int ktiles = padded_k(K) / kTileK;
  const int rows = std::min(M, chunk);
  const int64_t staged = wg_staged_x_bytes(rows, K);
  auto unit_cycles = [&](int bm, int64_t tiles) {
    return tiles * (450 + 34 * bm / 10) * (ntw == 2 ? 14 : 10) / 10 + 8 * bm * ntw + 500;
  };
  auto cost = [&](int bm, int splits) {
    const int64_t units = static_cast<int64_t>(nblocks) * ceil_div(rows, bm) * splits;
    const int64_t rounds = (units + sms - 1) / sms;
    const int64_t unit = unit_cycles(bm, ceil_div(ktiles, splits));
    const int64_t partials = splits > 1 ? 3000 + static_cast<int64_t>(splits) * M * N * 8 / 2000 : 0;
    return rounds * unit + partials;
  };
  // Stream-K tail (one split): whole rounds, then the rest's k-tiles spread over the grid (the
  // schedule the kernel walks, WsSchedule), plus the fixup: each BM x 128 fp32 slot parked and
  // read back through L2 (~16 bm cycles each way), as many per owner as CTAs share a unit.
  auto cost_stream_k = [&](int bm) {
    const int units = nblocks * ceil_div(rows, bm);
    const WsSchedule sch(units, ktiles, ws_grid(units, ktiles, sms, true), true);
    if (sch.tail_ctas == 0) return int64_t{-1};
    const int64_t per_cta = (sch.tail_tiles + sch.tail_ctas - 1) / sch.tail_ctas;
    const int64_t parts = (ktiles + per_cta - 1) / per_cta;
    // Without a whole round, units dealt out in more than 3 pieces mostly lost to the K split: of the
    // A/B's 14 such points, 10 took 1.06-1.24x its time (the 3584-5120-wide o/qkv layers and
    // Llama-3-8B down at M = 64-128), 3 tied, 1 won (0.82x). The owner's serial wait for its pieces
    // costs more than this model's slot traffic says.
    if (sch.full == 0 && parts > 3) return int64_t{-1};
    return (units / sch.ctas) * unit_cycles(bm, ktiles) + unit_cycles(bm, per_cta) + 16 * bm * (1 + parts) + 1000;
  };
  int64_t best = -1;
  for (const int bm : {256, 224, 192, 160, 128, small_bm}) {
    if ((M <= 64) != (bm == small_bm)) continue;
    for (int s = 1; s <= 16; ++s) {
      if (s > 1 && (chunk < M || ktiles / s < 4 || staged + static_cast<int64_t>(s) * M * N * 4 > kMaxWorkspaceBytes)) {
        break;
      }
      const int64_t c = cost(bm, s);
      if (best < 0 || c < best) {
        best = c;
        t.mt = bm / 8;
        t.splits = s;
        t.stream_k = false;
      }
      const int64_t sk = s == 1 ? cost_stream_k(bm) : -1;
      if (sk >= 0 && sk < best && staged + ws_stream_k_bytes(sms, bm, t.nt) <= kMaxWorkspaceBytes) {
        best = sk;
        t.mt = bm / 8;
        t.splits = 1;
        t.stream_k = true;
      }
    }
  }
  return true;
}

}  // namespace

// The K-split kernel's tile, in-block warps and K split, for the dense problem
// (rows = M) and the grouped one (rows = rows per active expert: a token tile
// never straddles two experts). Token tiles: decode batches fit one 8-row MMA
// tile; beyond 16 rows a block takes 32 rows and 64 columns so each weight byte
// feeds 4x more MMAs (the older families' path for M > 16). tiles_for(mt): the
// token tiles of work the grid holds at that tile height.
//
// Wide decode blocks: the sm80 family's 8- and 16-token tiles take 64 columns
// instead of 32 where the 64-column grid still has >= wide_min_blocks blocks.
// Each k-tile's x rows are read once per block, so at 16 tokens a 32-column
// block reads twice as many x bytes (through L1/L2) as weight bytes; 64 columns
// halve that and run 128-155 instructions per KB of weights instead of
// 151-174, at the price of a deeper ring per thread (fewer blocks per SM) and
// no 8/16-warp blocks, which small grids need. Measured on the H200 (sm80 code
// on 9.0, benchmarks/results/h200-2026-11-28-ksw.txt, 18 TP1 layers; 64-column /
// 32-column time): dense layers whose 64-column grid had >= 128 blocks
// (132 SMs) 0.76-1.01x at M = 1-16 (Llama-2-70B gate_up 0.87x at M = 1, 0.78x
// at 16; Llama-3-8B gate_up 0.92x at 16), those with <= 112 blocks 1.02-1.35x;
// hence wide_min_blocks = 7/8 of the SMs for dense problems. Grouped problems
// (moe-h200-20261128-2132, whole layer): Qwen3-30B-A3B T = 16 / 64 / 128
// 0.89 / 0.90 / 0.88x and Mixtral T = 16 0.89x (grids of 1,968+ blocks), but
// Qwen3 T = 1 1.08x (8 experts: 192 and 256 blocks of 8-32 k-tiles each);
// hence 4 blocks per SM there.
template <class TilesFor>
void plan_ksplit(TileConfig& t, Family family, int rows, int ntiles, int ktiles, TilesFor tiles_for, int64_t want,
                 int64_t wide_min_blocks, bool grouped = false) {
  t.kind = KernelKind::kKSplit;
  if (rows <= 8) {
    t.mt = 1;
    t.nt = 2;
  } else if (rows <= 16 || family == Family::kSm70) {
    // Volta's m8n8k4 keeps 16 accumulators per 8 x 16 tile (4 quad pairs),
    // so a 32 x 64 block would need 256 of them: stay at 16 x 32 and let
    // grid.y cover M (bounded by dense_min_m).
    t.mt = 2;
    t.nt = 2;
  } else {
    t.mt = 4;
    t.nt = 4;
  }
  const bool wide_decode = family == Family::kSm80 && t.mt <= 2 &&
                           static_cast<int64_t>(ceil_div(ntiles, 4)) * tiles_for(t.mt) >= wide_min_blocks;
  if (wide_decode) t.nt = 4;
  const int blocks = ceil_div(ntiles, t.nt) * tiles_for(t.mt);
  // The estimate uses the cp.async ring depth for every family (the
  // register-staged ones run deeper, so this errs towards splitting).
  const int stages = pipeline_stages(t.mt, /*async_ring=*/true);
  auto inflight = [&](int kwarps) { return static_cast<int64_t>(blocks) * kwarps * 32 * stages * t.nt * 16; };
  // Grouped decode GEMMs of short K whose grid dwarfs the GPU take one-warp
  // blocks: the warp streams the block's whole K slice, with no cross-warp
  // reduction and one offset scan per block. Qwen3-30B-A3B at T = 64 (H200
  // timeline, 4-warp 64-column blocks): the down projection (K = 768, 3
  // k-tiles per warp, 4,096 blocks) took 51 us for 101 MB of weights (2.2x
  // the floor), gate_up (K = 2048) 67 us for 201 MB (1.45x): each block was
  // mostly offset scan, first-load latency and reduction. Taken where one warp
  // per block keeps twice the bytes in flight the GPU needs and K <= 2048 (32
  // k-tiles: Mixtral's 4096 and 14336 stay), at every tile height (8, 16 and
  // 32 rows; launch.h has their one-warp instantiations). The 32 x 64 tiles of
  // experts with 9-32 rows had the same per-block overhead on 4 warps:
  // Qwen3-30B-A3B at T = 256 (H200, whole layer, moe-h200-20261129-0005) ran
  // 288.5 us with them, 211.1 on one warp (timeline: gate_up 143.3 -> 111.1
  // us, down 114.2 -> 67.3); other T and Mixtral within 3 %.
  t.kwarps = 4;
  if (grouped && family == Family::kSm80 && ktiles <= 32 && inflight(1) >= 2 * want) {
    t.kwarps = 1;
    t.splits = 1;
    return;
  }
  // First widen the in-block K split (8, then 16 warps, summed in shared
  // memory: no extra launch); only if that is still short, split K across
  // blocks (a second launch for the reduction).
  const int max_kwarps = wide_decode ? 4 : family == Family::kSm80 ? 16 : 8;  // see launch.h launch_family
  if (t.mt <= 2) {
    while (t.kwarps < max_kwarps && inflight(t.kwarps) < want && ktiles >= 2 * 2 * t.kwarps) t.kwarps *= 2;
  }
  t.splits = choose_splits(ktiles, 2 * t.kwarps, want, inflight(t.kwarps));
}

// The x-shared kernel (sm80): warps split N and share each activation tile
// through shared memory, 128 columns x 32 or 64 tokens per block. (At M <= 16
// the K-split kernel measured faster: v4 in docs/perf-notes.md.) `rows` picks
// the tile height (M, or the rows per active expert of a grouped problem);
// row_blocks(mt) is the grid's block rows for that height.
template <class RowBlocks>
void plan_xshared(TileConfig& t, int rows, RowBlocks row_blocks, int ntiles, int ktiles, int64_t want) {
  t.kind = KernelKind::kXShared;
  t.mt = rows <= 32 ? 4 : 8;
  t.nt = kXsNT;
  t.kwarps = kXsWarps;
  const int blocks = ceil_div(ntiles, t.nt * t.kwarps) * row_blocks(t.mt);
  const int64_t per_split =
      static_cast<int64_t>(blocks) * t.kwarps * 32 * (xs_stages(t.mt) - 1) * t.nt * 16;  // tiles in flight
  // Twice the decode target: measured 6 % faster at M = 32, neutral at 64
  // (benchmarks/sweep_knob.sh AWQGEMM_INFLIGHT_KIB, docs/perf-notes.md v6).
  t.splits = choose_splits(ktiles, 4, 2 * want, per_split);
  t.splits = std::min(t.splits, xs_max_splits());
}

Plan make_plan(Family family, PathRequest path, const DeviceInfo& dev, int M, int N, int K, int dtype_bytes,
               int wip) {
  Plan plan;
  TileConfig& t = plan.tile;
  const int ntiles = padded_n(N) / kTileN;
  const int ktiles = padded_k(K) / kTileK;
  // Keep enough weight bytes in flight to cover DRAM latency (Little's law:
  // ~3 TB/s x ~1 us over 132 SMs is ~24 KiB per SM on an H100).
  const int sms = dev.sm_count > 0 ? dev.sm_count : 80;
  const int64_t want = static_cast<int64_t>(inflight_bytes_per_sm()) * sms;

  if (family == Family::kSm90) {
    if (path == PathRequest::kFused || (path == PathRequest::kAuto && wgmma_auto(M, N, K, sms))) {
      plan.family = Family::kSm90;
      if (plan_wgws(plan, sms, M, N, K)) {
        // x through a tensor map where the rows go in one launch (the staged-x chunks exist only for
        // the staging kernel's workspace). launch_ws still stages x for groups of 32 and for an x the
        // map cannot read (unaligned base or row stride).
        t.tma_x = ws_chunk_rows(M, K) >= M;
        // Four consumer warpgroups of one weight tile per warp (20 warps) instead of two of two, at the
        // 48- and 64-token tiles without stream-K. There the consumers are latency-bound (ncu of down at
        // 64 tokens: 2.1 active warps per scheduler, 0.58 eligible; with four: 4.2 and 1.10, 27.6 ->
        // 25.7 us). H200, 2026-11-29 22:03, four / two warpgroups: fp16 0.96-0.98 geomean at M = 40-64
        // (down 0.92-0.96), bf16 0.97 at 40 / 48 and 1.00 at 56 / 64; Llama-3-8B batch 64 end to end
        // 5.177 -> 5.022 ms per step. Measured slower, so left on two: the 32-token tiles (1.00-1.04)
        // and the stream-K plans (every gate_up at <= 64 tokens: 1.00-1.04).
        if (t.tma_x && !t.stream_k && ws_four_wg_tile(8 * t.mt)) {
          t.four_wg = true;
          t.kwarps = ws_threads(4) / 32;
        }
      } else {
        // K too long to stage even 256 rows (K > 65536): the v9 kernel, which gathers x itself. BM =
        // 64, 128 or 256 tokens (256: one block per SM, twice the tokens per dequantized weight).
        const int mt = M <= 64 ? 8 : M <= 512 ? 16 : 32;
        plan_wg_v9(t, mt, ceil_div(ntiles, kWgNT) * ceil_div(M, 8 * mt), sms, ktiles, M, N);
      }
      finish_plan(plan, dev, /*kernel_has_wait=*/true, M, N, K);
      return plan;
    }
    family = Family::kSm80;  // same packed layout: the sm80 kernels take the rest
  }
  plan.family = family;
  if (family == Family::kSm80 && path == PathRequest::kWTile) {
    plan_wtile(plan, sms, M, N, K);
    finish_plan(plan, dev, /*kernel_has_wait=*/dev.ptx_arch >= 90, M, N, K);
    return plan;
  }
  if (path == PathRequest::kWTile) path = PathRequest::kFused;  // the older families have no weight-tile kernel
  if (path == PathRequest::kDense || (path == PathRequest::kAuto && M >= dense_min_m(family))) {
    plan.dense = true;
    plan.workspace_bytes = static_cast<int64_t>(dense_chunk_columns(N, K, dtype_bytes)) * K * dtype_bytes;
    return plan;
  }

  if (family == Family::kSm80 && wtile_auto(M, K)) {
    plan_wtile(plan, sms, M, N, K);
    finish_plan(plan, dev, /*kernel_has_wait=*/dev.ptx_arch >= 90, M, N, K);
    return plan;
  }
  if (family == Family::kSm80 && M > 16) {
    plan_xshared(t, M, [&](int mt) { return ceil_div(M, 8 * mt); }, ntiles, ktiles, want);
  } else {
    // Warps split K (plan_ksplit); grid.y covers M in token tiles.
    plan_ksplit(t, family, M, ntiles, ktiles, [&](int mt) { return ceil_div(M, 8 * mt); }, want, (7 * sms + 7) / 8);
    const int blocks = ceil_div(ntiles, t.nt) * ceil_div(M, 8 * t.mt);
    // Just over one block per SM, a few SMs stream twice what the rest do.
    // Splitting K in two evens that out, but pays a reduction launch and
    // partials, which only long K slices amortise. Measured on the H100
    // (AWQGEMM_BALANCE sweep, docs/perf-notes.md v8): split in two where
    // blocks <= 1.25 x SMs and each warp has >= 16 k-tiles -- Qwen2.5-32B down
    // -19 % (TP1) / -14 % (TP2), Llama-2-70B qkv TP2 -8 % at M = 1; splitting
    // anywhere else in the 1-2 blocks/SM window was 2-37 % slower, and
    // 16-warp blocks instead of the split lost almost everywhere.
    // Measured for the sm80 family only; the register-staged sm70/sm75 kernels keep the plain plan.
    if (balance_enabled() && family == Family::kSm80 && t.mt <= 2 && t.splits == 1 && blocks > sms &&
        4 * blocks <= 5 * sms && ktiles >= 16 * t.kwarps) {
      t.splits = 2;
    }
  }
  finish_plan(plan, dev, /*kernel_has_wait=*/dev.ptx_arch >= 90, M, N, K);
  return plan;
}

// Grouped problems run the K-split kernel on every family; large experts run
// v11.1 on sm90 and the x-shared kernel on sm80 (sm90 hands the K-split ones to
// sm80's kernel: same packed layout). A block's token tile never straddles two
// experts, so the tile height follows the rows per active expert (R / min(E, R)),
// not R: decode's handful of rows per expert gets 8-row tiles. No dense path:
// it would dequantize all E experts (E x N x K) or need each expert's row count
// on the host (a sync). Split-K partials are [splits][R][N] fp32, capped like
// the wgmma plan's.
Plan make_grouped_plan(Family family, const DeviceInfo& dev, int R, int E, int N, int K, int wip) {
  Plan plan;
  TileConfig& t = plan.tile;
  const int ntiles = padded_n(N) / kTileN;
  const int ktiles = padded_k(K) / kTileK;
  const int sms = dev.sm_count > 0 ? dev.sm_count : 80;
  const int64_t want = static_cast<int64_t>(inflight_bytes_per_sm()) * sms;
  const int active = std::max(1, std::min(E, R));
  // Tiles that do work: at least one per active expert, at least R / tile.
  const auto row_blocks = [&](int mt) { return std::max(active, ceil_div(R, 8 * mt)); };
  const int rows_per_expert = ceil_div(R, active);
  // Experts of 17-64 rows run v11.1 too, in the smallest of the 32-, 48- and 64-token tiles that holds
  // mean + 2 standard deviations of the routed rows (~Poisson, as the K-split tiles below), so most
  // experts take one tile. H200, whole Qwen3-30B-A3B layer (moe-h200-20261129-1327, CUDA graphs): T = 384
  // (24 rows per expert) 235.9 -> 205.2 us, T = 512 (32 rows) 297.4 -> 218.0 (Marlin MoE 223.1 / 270.3)
  // against the sm80 K-split kernel these experts ran before; 48 and 64 rows within 1 % of one
  // 64-token tile.
  const double mean_rows = static_cast<double>(R) / active;
  const int spread_rows = static_cast<int>(std::ceil(mean_rows + 2.0 * std::sqrt(mean_rows)));
  int ws_bm = rows_per_expert > 64 ? 128 : ws_short_tile(std::min(64, spread_rows));
  // Where mean + 2 sd of the rows per expert is 129-224, the smallest of the 160-, 192- and 224-token
  // tiles that holds it: one pass over most experts' weights instead of two 128-token tiles. H200, whole
  // layer (moe-h200-20261129-1614, CUDA graphs): Mixtral T = 512 (128 rows per expert, 160-token tiles)
  // 1,283 -> 932 us, T = 768 (224) 1,454 -> 1,326; Qwen3-30B-A3B T = 2,048 (160) 590 -> 542, T = 3,072
  // (224) 796 -> 803 (Marlin MoE 1,628 / 2,146 / 786 / 1,130).
  if (rows_per_expert > 64 && spread_rows > 128 && spread_rows <= 224) {
    ws_bm = spread_rows <= 160 ? 160 : spread_rows <= 192 ? 192 : 224;
  }
  if (family == Family::kSm90 && rows_per_expert > 16 && ws_group_chunk_tiles(ws_bm, K) >= 1) {
    // v11.1 over token tiles of one expert each (launch_ws_grouped), 128 tokens (or a mid tile, above)
    // above 64 rows per expert; one K split (a prefill-sized problem has units for every SM). H200, whole
    // layer with Marlin MoE in the same process (moe-h200-20261129-0315), against the sm80 x-shared
    // kernel these experts ran before: Qwen3-30B-A3B T = 1024 523 -> 416 us, T = 4096 1,500 -> 1,021
    // (Marlin MoE 504 / 1,457); Mixtral T = 256 993 -> 642, T = 4096 11,760 -> 6,138 (Marlin MoE
    // 867 / 10,670). At 16 rows per expert and below (Qwen3 T <= 256) the K-split plans stay.
    plan.family = Family::kSm90;
    t.kind = KernelKind::kWgmmaWs;
    t.mt = ws_bm / 8;
    t.nt = kWgNT * ws_ntw(ws_bm);
    t.kwarps = kWsThreads / 32;
    t.splits = 1;
    finish_plan(plan, dev, /*kernel_has_wait=*/true, R, N, K);
    plan.workspace_bytes = grouped_workspace_bytes(plan, R, E, N, K);
    return plan;
  }
  if (family == Family::kSm90) family = Family::kSm80;
  plan.family = family;
  if (family == Family::kSm80 && rows_per_expert > 32) {
    // Prefill-sized experts on the x-shared kernel, planned as dense M. H200
    // (moe-h200-20261128-1127, the two grouped GEMMs alone): 0.68-0.78x the
    // K-split kernel's time at 64-256 rows per expert on Qwen3-30B-A3B, 0.92-0.93x
    // at 256-1024 on Mixtral; 1.11x at 32 (Mixtral T = 128), hence > 32.
    plan_xshared(t, rows_per_expert, row_blocks, ntiles, ktiles, want);
  } else {
    // Routed rows per expert scatter around the mean (~Poisson: at T = 128 on Qwen3-30B-A3B, 8 rows
    // per expert on average and over 8 for ~40 % of the experts), and every expert over the tile
    // height runs a second tile that dequantizes its whole weight again. Decode is bound by the
    // weight stream, not the MMAs, so the tile is sized for mean + 2 standard deviations. H200
    // (moe-h200-20261128-1508, CUDA graphs, whole layer): Qwen3-30B-A3B T = 128 229 -> 213 us,
    // T = 256 303 -> 294; Mixtral T = 64 470 -> 429; other points within 1 %.
    plan_ksplit(t, family, spread_rows, ntiles, ktiles, row_blocks, want, 4 * static_cast<int64_t>(sms),
                /*grouped=*/true);
  }
  while (t.splits > 1 && static_cast<int64_t>(t.splits) * R * N * 4 > kMaxWorkspaceBytes) --t.splits;
  finish_plan(plan, dev, /*kernel_has_wait=*/dev.ptx_arch >= 90, R, N, K);
  return plan;
}

cudaError_t run_gemm(const Plan& plan, const GemmProblem& p, cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;
  switch (plan.family) {
    case Family::kSm80: err = launch_sm80_m16n8k16(p, plan.tile, stream); break;
    case Family::kSm75: err = launch_sm75_m16n8k8(p, plan.tile, stream); break;
    case Family::kSm70: err = launch_sm70_m8n8k4(p, plan.tile, stream); break;
#if defined(AWQGEMM_HAS_SM90A)
    case Family::kSm90: err = launch_sm90a_m64nNk16(p, plan.tile, stream); break;
#endif
    default: break;
  }
  if (err != cudaSuccess || plan.tile.splits == 1) return err;
  GemmProblem partials = p;
  partials.workspace = p.workspace + partials_offset_bytes(plan, p.M, p.K) / 4;
  return launch_splitk_reduce(partials, plan.tile.splits, plan.reduce_pdl, stream);
}

}  // namespace awqgemm
