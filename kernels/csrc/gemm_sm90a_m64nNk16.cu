// Hopper (sm_90a): warpgroup MMA m64nNk16, fp16 and bf16, for the token counts
// where mma.sync runs out of tensor throughput (perf-notes: M = 64-256 needs
// 43-128 % of the measured mma.sync peak to meet its targets). Two kernels:
//
// v11.1 (gemm_wgws_sm90a.cuh, the dispatcher's choice): warp-specialized and
//   persistent; a producer warpgroup feeds an mbarrier ring by TMA (weights)
//   and bulk copies (x, staged beforehand in the A fragments' k order), two
//   consumer warpgroups dequantize and run the wgmmas.
// v9 (gemm_wg_kernel below): every thread both copies (one cp.async ring) and
//   computes. Dense problems take it only where x is too long to stage
//   (K > 65536).
// Grouped (MoE) problems of more than 32 rows per expert run v11.1 over token
// tiles of one expert each (launch_ws_grouped).
//
// v9's block: 2 warpgroups x 64 output columns n = 128 n, BM tokens (the wgmma's N).
//   A = weights, dequantized by each lane from packed layout 1 straight into
//       the register-A fragment (warp w of a warpgroup supplies 16 rows: one
//       16-column tile of the packed weight, exactly as the mma.sync kernels).
//   B = activations, BM tokens x 64 k per stage in shared memory, K-major with
//       the 128-byte swizzle.
//   D = fp32 [n][m] in registers (BM / 2 per thread).
// The ring's stage holds each thread's 16-byte weight slot and (scale, zero)
// pair, and the activation tile. Layout 1 permutes k inside a lane's fragment
// (packed_layout.h); mma.sync kernels cancel that by loading x the same way,
// here the permutation is applied while staging x: every 4-byte pair of x
// lands at the (step, logical k) the A fragment expects.
//
// Only this translation unit is compiled for sm_90a (arch-specific features);
// builds without it lack the family (CMake defines AWQGEMM_HAS_SM90A for the
// dispatcher only when this file is in the build).
#include "awqgemm/families.h"
#include "awqgemm/gemm_tile.cuh"
#include "awqgemm/launch.h"
#include "awqgemm/wgmma_sm90a.cuh"

#include <algorithm>

#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AWQGEMM_NO_WGMMA 1  // a device pass without sm_90a features: the kernels trap (never launched)
#endif

#include "awqgemm/gemm_wgws_sm90a.cuh"  // v11: warp-specialized, persistent (after AWQGEMM_NO_WGMMA)

namespace awqgemm {
namespace {

constexpr int kWgThreads = 256;  // 2 warpgroups
constexpr int kWgWarps = kWgThreads / 32;
static_assert(kWgNT == kWgWarps, "one 16-column weight tile per warp");

template <int BM>
struct WgSmem {
  static constexpr int kX = BM * kTileK * 2;  // activation tile: BM rows of 128 bytes, swizzled
  static constexpr int kW = kWgThreads * 16;  // one 16-byte weight slot per thread
  static constexpr int kSz = kWgThreads * 8;  // one (scale, zero) pair slot per thread
  static constexpr int kStage = kX + kW + kSz;
  static_assert(kStage % 1024 == 0, "every stage's activation tile starts on a swizzle atom");
  // + 1024: the dynamic shared memory base is aligned up to the next atom.
  static constexpr int bytes(int stages) { return stages * kStage + 1024; }
};

__device__ __forceinline__ void cp_async_4_zfill(uint32_t smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem), "l"(gmem), "r"(src_bytes));
}

// The v9 kernel. Dense problems take it only where v11.1 cannot stage x (K > 65536, plan_wgws).
template <typename T, int BM, int STAGES>
__global__ void __launch_bounds__(kWgThreads, wg_min_blocks(BM)) gemm_wg_kernel(const GemmProblem p, const int splits,
                                                              const int pdl_flags) {
#if defined(AWQGEMM_NO_WGMMA)
  __trap();
#else
  using L = WgSmem<BM>;
  // Prefetch distance: one slot beyond the tile being computed stays with the
  // previous tile, whose last wgmma may still be reading it (wait_group 1).
  constexpr int kDist = STAGES - 2;
  static_assert(kDist >= 1, "need at least 3 stages");
  extern __shared__ uint4 smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* const sbase = reinterpret_cast<unsigned char*>(smem_raw) + (base - raw);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int q = lane & 3;

  const int ktiles = padded_k(p.K) / kTileK;
  const int ntiles = padded_n(p.N) / kTileN;
  const int nt = blockIdx.x * kWgWarps + warp;
  const int ntc = min(nt, ntiles - 1);  // tiles past the end re-read the last one; never stored
  const int m0 = blockIdx.y * BM;
  // The rows this block may store: [m0, min(m0 + BM, m_end)).
  const int m_end = p.M;
  const void* qweight = p.qweight;
  const void* scale_zero = p.scale_zero;
  const int per_split = ceil_div(ktiles, splits);
  const int kt_begin = blockIdx.z * per_split;
  const int n_k = max(0, min(ktiles, kt_begin + per_split) - kt_begin);  // block-uniform

  const uint4* wsrc = reinterpret_cast<const uint4*>(qweight) + static_cast<size_t>(ntc) * ktiles * 32 + lane;
  const uint2* szsrc = reinterpret_cast<const uint2*>(scale_zero) + g;
  const T* x = reinterpret_cast<const T*>(p.x);

  // Staging of x. 4-byte unit u of a row's 64-k tile holds actual k 2u, 2u + 1
  // = 16 q' + 4 s + 2 h + {0, 1}, i.e. u = 8 q' + 2 s + h, which the A
  // fragment of step s reads as logical k 8 h + 2 q' + {0, 1}: 16-byte chunk
  // 2 s + h of the row (= u & 7), byte 4 q'. The 128-byte swizzle XORs the
  // chunk with row & 7. Lane u of warp w stages unit u of rows w, w + 8, ...:
  // each warp instruction reads one contiguous 128-byte row of x and writes
  // 32 distinct banks.
  const int u = lane;
  const uint32_t x_dst0 = static_cast<uint32_t>(warp * 128 + (((u & 7) ^ warp) << 4) + 4 * (u >> 3));
  // Row j of this thread's is m0 + warp + 8 j; rows past M are zero-filled
  // from x's base address (no bytes are read). The trip count is a constant
  // so the loop unrolls to one add, one select and the copy per row.
  const int rows_left = m_end - m0 - warp;
  const T* const x_row0 = x + static_cast<size_t>(m0 + warp) * p.x_row_stride + 2 * u;
  const size_t x_row8 = static_cast<size_t>(8) * p.x_row_stride;

  // Group sizes are powers of two (32, 64, 128): a shift, not a division, per tile.
  const int gshift = 31 - __clz(p.group_size);
  const uint2* const szlane = szsrc + ntc * 8;
  const size_t sz_group_stride = static_cast<size_t>(ntiles) * 8;

  int fetch_slot = 0;  // ring slots advance by one per tile: no modulo in the loop
  auto fetch = [&](int i) {
    if (i < n_k) {
      const int kt = kt_begin + i;
      const uint32_t st = base + fetch_slot * L::kStage;
      unsigned char* const gst = sbase + fetch_slot * L::kStage;
      cp_async_16(gst + L::kX + tid * 16, wsrc + static_cast<size_t>(kt) * 32);
      const int grp = (kt * kTileK + 16 * q) >> gshift;
      cp_async_8(gst + L::kX + L::kW + tid * 8, szlane + grp * sz_group_stride);
      const bool k_in = kt * kTileK + 2 * u < p.K;  // K tail: padded weights are zero, and so must x be (0 * NaN)
      const T* src = x_row0 + kt * kTileK;
#pragma unroll
      for (int j = 0; j < BM / kWgWarps; ++j, src += x_row8) {
        const bool in = k_in && 8 * j < rows_left;
        cp_async_4_zfill(st + x_dst0 + j * 8 * 128, in ? src : x, in ? 4 : 0);
      }
    }
    cp_async_commit();  // empty groups keep the count uniform
    fetch_slot = fetch_slot + 1 == STAGES ? 0 : fetch_slot + 1;
  };

  float acc[BM / 2];
#pragma unroll
  for (int i = 0; i < BM / 2; ++i) acc[i] = 0.f;

  // A registers of two k-tiles: tile i is dequantized (all 4 steps) while
  // tile i - 1's wgmmas run; wait_group 1 after each tile's commit means
  // tile i - 2 -- whose registers tile i reuses, and whose shared-memory slot
  // the next fetch refills -- has finished.
  uint32_t a[2][4][4];
  zero_a_sets(a);
  auto compute = [&](int slot, uint32_t (&at)[4][4], uint32_t (&prev)[4][4]) {
    const unsigned char* gst = sbase + slot * L::kStage;
    dequant_smem_tile<T>(gst + L::kX + tid * 16, gst + L::kX + L::kW + tid * 8, at);
    const uint32_t xaddr = base + slot * L::kStage;
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) WgmmaRA<BM, T>::run(acc, at[s], sw128_kmajor_desc(xaddr + 32 * s));
    wgmma_commit();
    wgmma_wait<1>();
    // The previous tile's wgmmas are retired only now: its A registers live until here.
#pragma unroll
    for (int s = 0; s < 4; ++s) keep_live(prev[s]);
  };
  int compute_slot = 0;
  auto step = [&](int i, uint32_t (&at)[4][4], uint32_t (&prev)[4][4]) {
    cp_async_wait<kDist - 1>();
    fence_proxy_async_shared();  // cp.async wrote through the generic proxy; wgmma reads through the async one
    __syncthreads();             // tile i visible to both warpgroups; tile i - 2's slot is free
    fetch(i + kDist);
    compute(compute_slot, at, prev);
    compute_slot = compute_slot + 1 == STAGES ? 0 : compute_slot + 1;
  };

  if (pdl_flags & kPdlLaunched) pdl_wait();  // x may still be being written by the previous kernel

#pragma unroll
  for (int s = 0; s < kDist; ++s) fetch(s);
  // Unrolled by two so each tile's A register set is a compile-time choice,
  // with no branch inside the loop (a branch there made the compiler copy
  // accumulators under in-flight wgmmas, and ptxas serialized them).
  int i = 0;
  for (; i + 1 < n_k; i += 2) {
    step(i, a[0], a[1]);
    step(i + 1, a[1], a[0]);
  }
  if (i < n_k) step(i, a[0], a[1]);
  wgmma_wait<0>();
  keep_live(acc);
  cp_async_wait<0>();
  if (pdl_flags & kPdlEarlyTrigger) pdl_launch_dependents();

  // D fragment: acc[4 c + 2 h + t] = (n row g + 8 h of this warp's tile, token 8 c + 2 q + t).
#pragma unroll
  for (int c = 0; c < BM / 8; ++c)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int m = m0 + 8 * c + 2 * q + t;
        const int n = nt * kTileN + g + 8 * h;
        if (m < m_end && n < p.N) store_result<T>(p, splits, m, n, acc[4 * c + 2 * h + t]);
      }
#endif
}

template <typename T, int BM>
cudaError_t launch_wg(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  constexpr int kStages = wg_stages(BM);
  constexpr int kSmem = WgSmem<BM>::bytes(kStages);
  const int ntiles = padded_n(p.N) / kTileN;
  if (p.row_offsets != nullptr) return cudaErrorInvalidConfiguration;  // grouped problems run v11.1
  const dim3 grid(ceil_div(ntiles, kWgNT), ceil_div(p.M, BM), cfg.splits);
  return launch_with_smem<kSmem, gemm_wg_kernel<T, BM, kStages>>(grid, kWgThreads, p, cfg, stream);
}

// The weight tensor map of v11.1 (gemm_wgws_sm90a.cuh): the packed weight
// as a 2-D array of uint32, one row per 16-column tile (ktiles * 128 words),
// boxes of 8 rows x 128 words (one k-tile of a block's 8 column tiles). The
// encoder comes from the driver through cudart's entry-point lookup (no
// libcuda link, no cuda.h); the enum values are the driver API's
// (CU_TENSOR_MAP_DATA_TYPE_UINT32 = 2, *_NONE = 0, L2 promotion 256B = 3).
using EncodeTiledFn = int (*)(TensorMap128*, int, unsigned, void*, const unsigned long long*,
                              const unsigned long long*, const unsigned*, const unsigned*, int, int, int, int);

EncodeTiledFn tensor_map_encoder() {
  static const EncodeTiledFn fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return static_cast<EncodeTiledFn>(nullptr);
    }
    return reinterpret_cast<EncodeTiledFn>(f);
  }();
  return fn;
}

// One tiled map: unit element strides, no interleave, 256-byte L2 promotion (3), out-of-bounds
// elements read as zeros; `rank` dims, rank - 1 byte strides.
cudaError_t encode_tiled(TensorMap128* map, int dtype, unsigned rank, const void* base, const unsigned long long* dims,
                         const unsigned long long* strides, const unsigned* box, int swizzle) {
  const EncodeTiledFn encode = tensor_map_encoder();
  if (encode == nullptr) return cudaErrorNotSupported;
  const unsigned unit_strides[3] = {1, 1, 1};
  const int rc = encode(map, dtype, rank, const_cast<void*>(base), dims, strides, box, unit_strides,
                        /*interleave none*/ 0, swizzle, /*L2 256B*/ 3, /*OOB fill none*/ 0);
  return rc == 0 ? cudaSuccess : cudaErrorInvalidValue;
}

// box_rows: column tiles per box (a block's: kWgNT x ws_ntw(BM)). Grouped problems
// get a third dimension, the expert (qweight_batch_stride words apart), so a box
// past an expert's last column tile is zero-filled instead of reading the next
// expert's.
cudaError_t weight_tensor_map(const GemmProblem& p, TensorMap128* map, unsigned box_rows) {
  const unsigned long long ktiles = padded_k(p.K) / kTileK;
  const bool grouped = p.row_offsets != nullptr;
  const unsigned long long dims[3] = {ktiles * kWordsPerTile, static_cast<unsigned long long>(padded_n(p.N) / kTileN),
                                      static_cast<unsigned long long>(p.num_batches)};
  const unsigned long long strides[2] = {ktiles * kWordsPerTile * 4,
                                         static_cast<unsigned long long>(p.qweight_batch_stride) * 4};
  if (grouped && (p.qweight_batch_stride < 0 || strides[1] % 16 != 0)) return cudaErrorMisalignedAddress;
  const unsigned box[3] = {kWordsPerTile, box_rows, 1};
  return encode_tiled(map, /*UINT32*/ 2, grouped ? 3 : 2, p.qweight, dims, strides, box, /*swizzle none*/ 0);
}

// Dense v11.1 with x through a tensor map (TileConfig::tma_x): the weight as [column tiles][ktiles x 4
// lines][32 words] with the 128-byte swizzle (a box of 4 lines x kNB tiles is one k-tile of a block, as
// the 2-D map's), so the consumers' reads of other lanes' words hit 8 bank groups (gemm_wgws_sm90a.cuh,
// kTmaX); and x itself
// [M][K] of 16-bit elements, boxes of BM rows x 64 k in the 128-byte swizzle the B descriptor reads,
// rows past M and k past K zero-filled (CU_TENSOR_MAP_DATA_TYPE_UINT16 = 1, SWIZZLE_128B = 3).
cudaError_t weight_tensor_map_lines(const GemmProblem& p, TensorMap128* map, unsigned box_tiles) {
  const unsigned long long ktiles = padded_k(p.K) / kTileK;
  const unsigned long long dims[3] = {32, ktiles * 4, static_cast<unsigned long long>(padded_n(p.N) / kTileN)};
  const unsigned long long strides[2] = {128, ktiles * kWordsPerTile * 4};
  const unsigned box[3] = {32, 4, box_tiles};
  return encode_tiled(map, /*UINT32*/ 2, 3, p.qweight, dims, strides, box, /*swizzle 128B*/ 3);
}
cudaError_t x_tensor_map(const GemmProblem& p, TensorMap128* map, unsigned box_rows) {
  const unsigned long long dims[2] = {static_cast<unsigned long long>(p.K), static_cast<unsigned long long>(p.M)};
  const unsigned long long strides[1] = {static_cast<unsigned long long>(p.x_row_stride) * 2};
  const unsigned box[2] = {kTileK, box_rows};
  return encode_tiled(map, /*UINT16*/ 1, 2, p.x, dims, strides, box, /*swizzle 128B*/ 3);
}

// setmaxnreg.inc waits (in hardware, past the hang trap) until the block's pool has the registers the
// consumers ask for, and the pool is what the launch allocated: numRegs x threads. ptxas gives this
// kernel 168 = 65536 / 384 rounded down to 8, exactly 128 x 40 + 256 x 232; a build that gave it fewer
// (-maxrregcount, another ptxas) would hang every launch, so it is refused instead.
static_assert(ws_pool_regs(2) <= ws_launch_regs(2) && ws_pool_regs(4) <= ws_launch_regs(4),
              "the producer's and consumers' registers must fit one block's pool (two or four consumer warpgroups)");
template <int kCWG = 2, class Kernel>
cudaError_t ws_register_pool(Kernel kernel) {
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
  if (e != cudaSuccess) return e;
  return attr.numRegs * ws_threads(kCWG) >= ws_pool_regs(kCWG) ? cudaSuccess : cudaErrorInvalidConfiguration;
}
// The instantiations of one launcher's kernel (stream-K or not; four consumer warpgroups have no
// stream-K one), checked once per process.
template <typename T, int BM, int STAGES, bool kTmaX, int kCWG = 2>
cudaError_t ws_register_pools() {
  static const cudaError_t pools = [] {
    const cudaError_t e = ws_register_pool<kCWG>(gemm_ws_kernel<T, BM, STAGES, false, false, kTmaX, kCWG>);
    if constexpr (kCWG == 4) {
      return e;
    } else {
      return e != cudaSuccess ? e : ws_register_pool(gemm_ws_kernel<T, BM, STAGES, true, false, kTmaX>);
    }
  }();
  return pools;
}

// v11.1 reading x through a tensor map, no staging kernel (TileConfig::tma_x). A stream-K
// plan still needs its flags cleared (the workspace comes from torch uncleared): the staging kernel
// with no rows does that and nothing else. `grid` and `after_x` (the workspace past the unused
// staged-x area, where the partials and stream-K slots go): launch_ws's. kCWG = 4 (TileConfig::four_wg,
// BM 48 / 64 without stream-K): four consumer warpgroups of one tile per warp, 640 threads.
template <typename T, int BM, int kCWG = 2>
cudaError_t launch_ws_tma_x(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream, int grid,
                            float* after_x) {
  constexpr int kStages = ws_stages(BM);
  constexpr int kSmem = kStages * ws_stage_bytes(BM) + 1024;
  cudaError_t err = ws_register_pools<T, BM, kStages, true, kCWG>();
  if (err != cudaSuccess) return err;
  typename WsMaps<true>::type maps{};
  err = weight_tensor_map_lines(p, &maps.w, kWgNT * ws_ntw(BM));
  if (err == cudaSuccess) err = x_tensor_map(p, &maps.x, BM);
  if (err != cudaSuccess) return err;
  if (cfg.stream_k) {
    err = launch_maybe_pdl(stage_x_tiles_kernel<T>, dim3(1), dim3(256), 0, (cfg.pdl_flags & kPdlLaunched) != 0,
                           stream, p, 0, 0, static_cast<T*>(nullptr), reinterpret_cast<int*>(after_x), grid);
    if (err != cudaSuccess) return err;
  }
  GemmProblem g = p;
  g.workspace = after_x;
  const WsGroup none{nullptr, 0};
  constexpr int kThreads = ws_threads(kCWG);
  if constexpr (kCWG == 4) {
    return launch_with_smem<kSmem, gemm_ws_kernel<T, BM, kStages, false, false, true, 4>>(dim3(grid), kThreads, g,
                                                                                            cfg, stream, maps, none);
  } else {
    return cfg.stream_k ? launch_with_smem<kSmem, gemm_ws_kernel<T, BM, kStages, true, false, true>>(
                              dim3(grid), kThreads, g, cfg, stream, maps, none)
                        : launch_with_smem<kSmem, gemm_ws_kernel<T, BM, kStages, false, false, true>>(
                              dim3(grid), kThreads, g, cfg, stream, maps, none);
  }
}

// v11 (gemm_wgws_sm90a.cuh): x staged tile-major and swizzled at the front of
// the workspace, then the persistent kernel on min(units, SMs) blocks. Above
// kWgMaxStagedXBytes of staged x the rows go in chunks (ws_chunk_rows, a
// multiple of 256), each staged and multiplied in turn; the plan never splits
// K then, so the partials' [splits][M][N] indexing stays whole-problem. Under
// PDL each stage kernel waits for the GEMM before it (which still reads the
// staged x it overwrites) and each GEMM for its stage kernel.
template <typename T, int BM>
cudaError_t launch_ws(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  constexpr int kStages = ws_stages(BM);
  constexpr int NTW = ws_ntw(BM);
  constexpr int kSmem = kStages * ws_stage_bytes(BM) + 1024;  // + 1024: the base is aligned up to a swizzle atom
  static_assert(kSmem <= 227 * 1024, "one block per SM must fit");
  const int chunk = ws_chunk_rows(p.M, p.K);
  if (chunk <= 0 || (chunk < p.M && cfg.splits != 1) || (cfg.stream_k && cfg.splits != 1)) {
    return cudaErrorInvalidConfiguration;
  }
  // cp.async.bulk needs 16-byte aligned sources: torch's allocations are, but a
  // packed weight viewed at an odd offset of a larger buffer would fault.
  if (((reinterpret_cast<uintptr_t>(p.qweight) | reinterpret_cast<uintptr_t>(p.scale_zero) |
        reinterpret_cast<uintptr_t>(p.workspace)) & 15) != 0) {
    return cudaErrorMisalignedAddress;
  }
  cudaError_t err = ws_register_pools<T, BM, kStages, false>();
  if (err != cudaSuccess) return err;
  int device = 0, sms = 0;
  err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const bool pdl = (cfg.pdl_flags & kPdlLaunched) != 0;
  T* xs = reinterpret_cast<T*>(p.workspace);
  const int nblocks = ceil_div(padded_n(p.N) / kTileN, kWgNT * NTW);
  const int ktiles = padded_k(p.K) / kTileK;
  // The persistent grid for a launch over `rows` rows.
  const auto grid_for = [&](int rows) {
    const int64_t units = static_cast<int64_t>(nblocks) * ceil_div(rows, BM) * cfg.splits;
    return ws_grid(static_cast<int>(units), ceil_div(ktiles, cfg.splits), sms, cfg.stream_k);
  };
  float* const after_x = p.workspace + wg_staged_x_bytes(chunk, p.K) / 4;
  // The stream-K flags and slots (at most one CTA per SM): refused, not overrun, if the caller's
  // workspace is short of them.
  if (cfg.stream_k && wg_staged_x_bytes(chunk, p.K) + ws_stream_k_bytes(sms, BM, kWgNT * NTW) > p.workspace_bytes) {
    return cudaErrorInvalidValue;
  }
  // tma_x: one launch over every row, x read where the caller left it. The tensor map needs a 16-byte
  // aligned x and row stride, and its kernels take groups of 64 / 128; anything else takes the staged
  // path below (the plan's workspace has room for it either way).
  if (cfg.tma_x && chunk >= p.M && p.group_size >= 64 &&
      ((reinterpret_cast<uintptr_t>(p.x) | (p.x_row_stride * sizeof(T))) & 15) == 0) {
    if constexpr (ws_four_wg_tile(BM)) {
      if (cfg.four_wg) return launch_ws_tma_x<T, BM, 4>(p, cfg, stream, grid_for(p.M), after_x);
    }
    return launch_ws_tma_x<T, BM>(p, cfg, stream, grid_for(p.M), after_x);
  }
  TensorMap128 wmap{};
  err = weight_tensor_map(p, &wmap, kWgNT * NTW);
  if (err != cudaSuccess) return err;
  for (int m0 = 0; m0 < p.M; m0 += chunk) {
    const int rows = std::min(chunk, p.M - m0);
    const int threads = 256;
    const int64_t chunks = static_cast<int64_t>(rows) * ktiles * 8;
    const int blocks = static_cast<int>(std::min<int64_t>((chunks + threads - 1) / threads, 65535));
    const int grid = grid_for(rows);
    int* const flags = cfg.stream_k ? reinterpret_cast<int*>(after_x) : nullptr;
    err = launch_maybe_pdl(stage_x_tiles_kernel<T>, dim3(blocks), dim3(threads), 0, pdl, stream, p, m0, rows, xs,
                           flags, cfg.stream_k ? grid : 0);
    if (err != cudaSuccess) return err;
    GemmProblem g = p;
    g.M = rows;
    g.x = xs;
    g.x_row_stride = kTileK;  // not read: the kernel indexes the staged tiles itself
    g.out = reinterpret_cast<T*>(p.out) + static_cast<int64_t>(m0) * p.out_row_stride;
    g.workspace = after_x;
    const WsGroup none{nullptr, 0};
    err = cfg.stream_k ? launch_with_smem<kSmem, gemm_ws_kernel<T, BM, kStages, true>>(
                             dim3(grid), kWsThreads, g, cfg, stream, wmap, none)
                       : launch_with_smem<kSmem, gemm_ws_kernel<T, BM, kStages, false>>(
                             dim3(grid), kWsThreads, g, cfg, stream, wmap, none);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Grouped (MoE) problems on v11.1: the tile table (grouped_ws_tiles_kernel) at the front of the
// workspace, then per chunk of tiles the grouped staging kernel and the persistent kernel over (tile,
// n-block) units. One K split, no bias (MoE experts have none), no stream-K. Under PDL each kernel
// waits for the one before it, as in launch_ws.
template <typename T, int BM>
cudaError_t launch_ws_grouped(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  constexpr int kStages = ws_stages(BM);
  constexpr int NTW = ws_ntw(BM);
  constexpr int kSmem = kStages * ws_stage_bytes(BM) + 1024;
  static_assert(kSmem <= 227 * 1024, "one block per SM must fit");
  if (cfg.splits != 1 || cfg.stream_k || p.bias != nullptr || p.num_batches < 1) {
    return cudaErrorInvalidConfiguration;
  }
  const int chunk_tiles = ws_group_chunk_tiles(BM, p.K);
  if (chunk_tiles < 1) return cudaErrorInvalidConfiguration;
  // Bulk copies need 16-byte aligned sources; the staging kernel reads x in 4-byte pairs.
  if (((reinterpret_cast<uintptr_t>(p.qweight) | reinterpret_cast<uintptr_t>(p.scale_zero) |
        reinterpret_cast<uintptr_t>(p.workspace)) & 15) != 0 ||
      (reinterpret_cast<uintptr_t>(p.x) & 3) != 0 || (p.x_row_stride & 1) != 0 ||
      (p.scale_zero_batch_stride * static_cast<int64_t>(sizeof(T))) % 16 != 0) {
    return cudaErrorMisalignedAddress;
  }
  static const cudaError_t pool = ws_register_pool(gemm_ws_kernel<T, BM, kStages, false, true>);
  if (pool != cudaSuccess) return pool;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int tiles = grouped_grid_rows(p.M, BM, p.num_batches);
  if (ws_group_workspace_bytes(tiles, BM, p.K) > p.workspace_bytes) return cudaErrorInvalidValue;
  const int per_launch = std::min(tiles, chunk_tiles);
  const int64_t table_bytes = ws_group_table_bytes(tiles);
  TensorMap128 wmap{};
  err = weight_tensor_map(p, &wmap, kWgNT * NTW);
  if (err != cudaSuccess) return err;
  auto* const table = reinterpret_cast<WsGroupTile*>(p.workspace);
  T* const xs = reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(p.workspace) + table_bytes);
  const bool pdl = (cfg.pdl_flags & kPdlLaunched) != 0;
  constexpr int kThreads = 256;
  err = launch_maybe_pdl(grouped_ws_tiles_kernel, dim3(ceil_div(tiles, kThreads / 32)), dim3(kThreads), 0, pdl,
                         stream, p, BM, table, tiles);
  if (err != cudaSuccess) return err;
  const int nblocks = ceil_div(padded_n(p.N) / kTileN, kWgNT * NTW);
  const int ktiles = padded_k(p.K) / kTileK;
  for (int t0 = 0; t0 < tiles; t0 += per_launch) {
    const int count = std::min(per_launch, tiles - t0);
    const int blocks = std::min(ceil_div(count * BM * 8, kThreads), 65535);  // a thread per row chunk, all k-tiles
    err = launch_maybe_pdl(stage_x_grouped_kernel<T, BM>, dim3(blocks), dim3(kThreads), 0, pdl, stream, p,
                           static_cast<const WsGroupTile*>(table), t0, count, xs);
    if (err != cudaSuccess) return err;
    GemmProblem g = p;
    g.M = count * BM;
    g.x = xs;
    g.x_row_stride = kTileK;  // not read: the kernel indexes the staged tiles itself
    const int grid = ws_grid(nblocks * count, ktiles, sms, /*stream_k=*/false);
    err = launch_with_smem<kSmem, gemm_ws_kernel<T, BM, kStages, false, true>>(
        dim3(grid), kWsThreads, g, cfg, stream, wmap, WsGroup{table, t0});
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t launch_typed(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  if (cfg.kind == KernelKind::kWgmmaWs) {
    if (cfg.nt != kWgNT * ws_ntw(8 * cfg.mt) || cfg.kwarps != ws_threads(cfg.four_wg ? 4 : 2) / 32) {
      return cudaErrorInvalidConfiguration;
    }
    if ((cfg.tma_x || cfg.four_wg) && p.row_offsets != nullptr) return cudaErrorInvalidConfiguration;  // dense only
    if (cfg.four_wg && (!cfg.tma_x || cfg.stream_k || !ws_four_wg_tile(8 * cfg.mt))) {
      return cudaErrorInvalidConfiguration;
    }
    if (p.row_offsets != nullptr) {
      switch (cfg.mt * 8) {  // make_grouped_plan's tiles
        case 32: return launch_ws_grouped<T, 32>(p, cfg, stream);
        case 48: return launch_ws_grouped<T, 48>(p, cfg, stream);
        case 64: return launch_ws_grouped<T, 64>(p, cfg, stream);
        case 128: return launch_ws_grouped<T, 128>(p, cfg, stream);
        case 160: return launch_ws_grouped<T, 160>(p, cfg, stream);
        case 192: return launch_ws_grouped<T, 192>(p, cfg, stream);
        case 224: return launch_ws_grouped<T, 224>(p, cfg, stream);
        default: return cudaErrorInvalidConfiguration;
      }
    }
    switch (cfg.mt * 8) {
      case 32: return launch_ws<T, 32>(p, cfg, stream);
      case 48: return launch_ws<T, 48>(p, cfg, stream);
      case 64: return launch_ws<T, 64>(p, cfg, stream);
      case 128: return launch_ws<T, 128>(p, cfg, stream);
      case 160: return launch_ws<T, 160>(p, cfg, stream);
      case 192: return launch_ws<T, 192>(p, cfg, stream);
      case 224: return launch_ws<T, 224>(p, cfg, stream);
      case 256: return launch_ws<T, 256>(p, cfg, stream);
      default: return cudaErrorInvalidConfiguration;
    }
  }
  if (cfg.kind != KernelKind::kWgmma || cfg.nt != kWgNT || cfg.kwarps != kWgWarps) return cudaErrorInvalidConfiguration;
  switch (cfg.mt * 8) {
    case 64: return launch_wg<T, 64>(p, cfg, stream);
    case 128: return launch_wg<T, 128>(p, cfg, stream);
    case 256: return launch_wg<T, 256>(p, cfg, stream);
    default: return cudaErrorInvalidConfiguration;
  }
}

}  // namespace

cudaError_t launch_sm90a_m64nNk16(const GemmProblem& p, const TileConfig& cfg, cudaStream_t stream) {
  return p.dtype == DType::kBFloat16 ? launch_typed<__nv_bfloat16>(p, cfg, stream)
                                     : launch_typed<__half>(p, cfg, stream);
}

}  // namespace awqgemm
