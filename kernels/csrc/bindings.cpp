// The nanobind module awqgemm._C: a thin, torch-free shim. Tensors arrive as
// raw device pointers with their shapes already validated by the Python layer
// (awqgemm/_ops.py); this file only plans, launches and reports CUDA errors as
// Python exceptions. Nothing here allocates device memory or synchronizes.
#include <cuda_runtime.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "awqgemm/dispatch.h"
#include "awqgemm/families.h"
#include "awqgemm/moe_routing.h"

namespace nb = nanobind;
using namespace awqgemm;

namespace {

// Runs on the caller's device without disturbing the thread's current one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (prev_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != prev_) cudaSetDevice(prev_);
  }
  static void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error(std::string("awqgemm: ") + what + " failed: " + cudaGetErrorString(err));
    }
  }

 private:
  int prev_ = -1;
};

PathRequest to_path(int p) {
  if (p < 0 || p > 3) {
    throw nb::value_error("awqgemm: path code must be 0 (auto), 1 (fused), 2 (dense) or 3 (weight-tile kernel)");
  }
  return static_cast<PathRequest>(p);
}

// The kernels index groups by shift and need a lane's 16 k inside one group:
// group sizes are the powers of two 32..128 (awqgemm/_validate.py checks the
// same set first, with the user-facing message).
int checked_group_size(int g, int K) {
  if ((g != 32 && g != 64 && g != 128) || K % g != 0) {
    throw nb::value_error(("awqgemm: group_size " + std::to_string(g) + " with K = " + std::to_string(K) +
                           " is not supported (32, 64 or 128, dividing K)")
                              .c_str());
  }
  return g;
}

DType to_dtype(int d) {
  if (d == 0) return DType::kFloat16;
  if (d == 1) return DType::kBFloat16;
  throw nb::value_error("awqgemm: dtype code must be 0 (float16) or 1 (bfloat16)");
}

Family to_family(int f) {
  switch (f) {
    case 0: return Family::kAuto;
    case 70: return Family::kSm70;
    case 75: return Family::kSm75;
    case 80: return Family::kSm80;
    case 90: return Family::kSm90;
    default: throw nb::value_error("awqgemm: kernel family must be one of 0 (auto), 70, 75, 80, 90");
  }
}

Family resolve(int family, int dtype, int device) {
  const DeviceInfo dev = device_info(device);
  if (dev.capability == 0) throw std::runtime_error("awqgemm: cannot query CUDA device " + std::to_string(device));
  std::string why;
  const Family f = choose_family(to_family(family), dev.capability, to_dtype(dtype), &why);
  if (f == Family::kAuto) throw nb::value_error(("awqgemm: " + why).c_str());
  return f;
}

std::vector<int> parse_archs(const char* list, bool want_ptx) {
  // CMake's CUDA_ARCHITECTURES syntax: "80" = SASS + PTX, "80-real" = SASS,
  // "80-virtual" = PTX.
  std::vector<int> out;
  std::string s(list), item;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == ';' || s[i] == ',') {
      if (!item.empty()) {
        const bool real = item.find("-real") != std::string::npos;
        const bool virt = item.find("-virtual") != std::string::npos;
        const int arch = std::stoi(item);  // "90a-real" -> 90 (build_info's arch_specific names the "a")
        const bool seen = std::find(out.begin(), out.end(), arch) != out.end();
        if ((want_ptx ? !real : !virt) && !seen) out.push_back(arch);
      }
      item.clear();
    } else {
      item.push_back(s[i]);
    }
  }
  return out;
}

// The fields every fused launch shares (plain and grouped), after checking
// that the caller's workspace holds what the plan asks for.
GemmProblem fused_problem(const Plan& plan, int dtype, int M, int N, int K, int group_size, uintptr_t x,
                          int64_t x_stride, uintptr_t qweight, uintptr_t scale_zero, uintptr_t out,
                          int64_t out_stride, uintptr_t workspace, int64_t workspace_bytes, int device,
                          int64_t grouped_need = -1) {
  // Only a stream-K plan's workspace depends on the SM count: no device lookup on the others' calls.
  const int sms = plan.tile.stream_k ? device_info(device).sm_count : 0;
  const int64_t need = grouped_need >= 0 ? grouped_need : fused_workspace_bytes(plan, M, N, K, sms > 0 ? sms : 80);
  if (need > workspace_bytes) {
    throw nb::value_error(("awqgemm: workspace of " + std::to_string(workspace_bytes) +
                           " bytes is smaller than the plan's " + std::to_string(need))
                              .c_str());
  }
  GemmProblem p;
  p.M = M;
  p.N = N;
  p.K = K;
  p.group_size = checked_group_size(group_size, K);
  p.dtype = to_dtype(dtype);
  p.x = reinterpret_cast<const void*>(x);
  p.x_row_stride = x_stride;
  p.qweight = reinterpret_cast<const void*>(qweight);
  p.scale_zero = reinterpret_cast<const void*>(scale_zero);
  p.out = reinterpret_cast<void*>(out);
  p.out_row_stride = out_stride;
  p.workspace = reinterpret_cast<float*>(workspace);
  p.workspace_bytes = workspace_bytes;
  return p;
}

}  // namespace

#ifndef AWQGEMM_CUDA_ARCHS
#define AWQGEMM_CUDA_ARCHS ""
#endif
#ifndef AWQGEMM_VERSION
#define AWQGEMM_VERSION "0.0.0"
#endif

NB_MODULE(_C, m) {
  m.doc() = "awqgemm CUDA kernels (torch-free core; use the awqgemm package, not this module)";

  m.def("family_for", [](int family, int dtype, int device) { return static_cast<int>(resolve(family, dtype, device)); },
        nb::arg("family"), nb::arg("dtype"), nb::arg("device"));

  m.def("layout_for", [](int family) { return layout_for(to_family(family)); }, nb::arg("family"));

  m.def(
      "plan",
      [](int family, int path, int dtype, int M, int N, int K, int device, int wip) {
        if (M < 1 || N < 1 || K < 1) throw nb::value_error("awqgemm: M, N and K must be positive");
        const Family f = resolve(family, dtype, device);
        const Plan plan = make_plan(f, to_path(path), device_info(device), M, N, K, 2, wip);
        return std::make_tuple(encode_plan(plan), static_cast<int>(plan.family), layout_for(plan.family), plan.dense,
                               plan.workspace_bytes);
      },
      nb::arg("family"), nb::arg("path"), nb::arg("dtype"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("device"),
      nb::arg("wip") = 0,
      "(plan code, family, packed layout it reads, dense?, workspace_bytes) for a problem. Deterministic, so a "
      "captured graph replays it; the plan code goes to gemm() unchanged (made once per call). wip: bits of the "
      "work-in-progress features to plan with (test switches; 0 in production).");

  m.def(
      "describe_plan",
      [](int64_t plan_code) {
        Plan plan;
        if (!decode_plan(plan_code, &plan)) throw nb::value_error("awqgemm: not a plan code from plan()");
        static const char* const kKernels[] = {"k_split", "x_shared", "wgmma", "w_tile", "wgmma_ws"};
        nb::dict d;
        d["kernel"] = plan.dense ? "dequantize+dense" : kKernels[static_cast<int>(plan.tile.kind)];
        d["tile_tokens"] = 8 * plan.tile.mt;
        d["splits"] = plan.tile.splits;
        d["stream_k"] = plan.tile.stream_k;
        d["tma_x"] = plan.tile.tma_x;
        d["four_wg"] = plan.tile.four_wg;
        d["wide"] = plan.tile.kind == KernelKind::kWgmmaWs && plan.tile.nt == 2 * kWgNT;
        d["block_warps"] = plan.dense ? 0 : plan.tile.kwarps;
        // The K-split kernel's block width (32, or 64: plan_ksplit's wide decode blocks); 0 for the others.
        d["block_columns"] = plan.tile.kind == KernelKind::kKSplit && !plan.dense ? kTileN * plan.tile.nt : 0;
        return d;
      },
      nb::arg("plan_code"), "kernel name, tokens per tile and K splits of a plan code");

  m.def(
      "gemm",
      [](int64_t plan_code, int dtype, int M, int N, int K, int group_size, uintptr_t x, int64_t x_stride,
         uintptr_t qweight, uintptr_t scale_zero, uintptr_t bias, uintptr_t out, int64_t out_stride,
         uintptr_t workspace, int64_t workspace_bytes, int device, uintptr_t stream) {
        Plan plan;
        if (!decode_plan(plan_code, &plan) || plan.dense) {
          throw nb::value_error("awqgemm: not a fused-kernel plan code from plan()");
        }
        GemmProblem p = fused_problem(plan, dtype, M, N, K, group_size, x, x_stride, qweight, scale_zero, out,
                                      out_stride, workspace, workspace_bytes, device);
        p.bias = reinterpret_cast<const void*>(bias);
        DeviceGuard guard(device);
        DeviceGuard::check(run_gemm(plan, p, reinterpret_cast<cudaStream_t>(stream)), "gemm launch");
      },
      nb::arg("plan_code"), nb::arg("dtype"), nb::arg("M"), nb::arg("N"), nb::arg("K"), nb::arg("group_size"),
      nb::arg("x"), nb::arg("x_stride"), nb::arg("qweight"), nb::arg("scale_zero"), nb::arg("bias"), nb::arg("out"),
      nb::arg("out_stride"), nb::arg("workspace"), nb::arg("workspace_bytes"), nb::arg("device"), nb::arg("stream"));

  m.def(
      "plan_grouped",
      [](int family, int dtype, int R, int E, int N, int K, int device, int wip) {
        if (R < 1 || E < 1 || N < 1 || K < 1) throw nb::value_error("awqgemm: R, E, N and K must be positive");
        const Family f = resolve(family, dtype, device);
        const Plan plan = make_grouped_plan(f, device_info(device), R, E, N, K, wip);
        if (grouped_grid_rows(R, 8 * plan.tile.mt, E) > 65535) {
          throw nb::value_error(("awqgemm: grouped GEMM of " + std::to_string(R) + " rows over " + std::to_string(E) +
                                 " experts needs more than 65535 grid rows; split the batch")
                                    .c_str());
        }
        return std::make_tuple(encode_plan(plan), static_cast<int>(plan.family), layout_for(plan.family),
                               plan.workspace_bytes);
      },
      nb::arg("family"), nb::arg("dtype"), nb::arg("R"), nb::arg("E"), nb::arg("N"), nb::arg("K"), nb::arg("device"),
      nb::arg("wip") = 0,
      "(plan code, family, packed layout it reads, workspace_bytes) for a grouped (MoE) problem of R rows over E "
      "experts; wip as for plan().");

  m.def(
      "gemm_grouped",
      [](int64_t plan_code, int dtype, int R, int N, int K, int group_size, int E, uintptr_t x, int x_rows,
         int64_t x_stride, uintptr_t row_index, uintptr_t row_offsets, uintptr_t qweight, int64_t qweight_stride,
         uintptr_t scale_zero, int64_t scale_zero_stride, uintptr_t out, int64_t out_stride, uintptr_t workspace,
         int64_t workspace_bytes, int device, uintptr_t stream) {
        Plan plan;
        const bool decoded = decode_plan(plan_code, &plan);
        const bool grouped_kind =
            (plan.tile.kind == KernelKind::kKSplit && plan.family != Family::kSm90) ||
            (plan.tile.kind == KernelKind::kXShared && plan.family == Family::kSm80) ||
            (plan.tile.kind == KernelKind::kWgmmaWs && plan.family == Family::kSm90 && 8 * plan.tile.mt <= 224 &&
             plan.tile.splits == 1 && !plan.tile.stream_k &&
             !plan.tile.tma_x);  // make_grouped_plan's tiles: 32-128, 160-224
        if (!decoded || plan.dense || !grouped_kind) {
          throw nb::value_error("awqgemm: not a grouped plan code from plan_grouped()");
        }
        if (R < 1 || E < 1 || x_rows < 1 || row_offsets == 0) {
          throw nb::value_error("awqgemm: a grouped GEMM needs R, E, x rows >= 1 and expert offsets");
        }
        if (grouped_grid_rows(R, 8 * plan.tile.mt, E) > 65535) {
          throw nb::value_error("awqgemm: grouped GEMM grid too tall; split the batch");
        }
        GemmProblem p = fused_problem(plan, dtype, R, N, K, group_size, x, x_stride, qweight, scale_zero, out,
                                      out_stride, workspace, workspace_bytes, device,
                                      grouped_workspace_bytes(plan, R, E, N, K));
        p.x_rows = x_rows;
        p.row_index = reinterpret_cast<const int32_t*>(row_index);
        p.num_batches = E;
        p.row_offsets = reinterpret_cast<const int32_t*>(row_offsets);
        p.qweight_batch_stride = qweight_stride;
        p.scale_zero_batch_stride = scale_zero_stride;
        DeviceGuard guard(device);
        DeviceGuard::check(run_gemm(plan, p, reinterpret_cast<cudaStream_t>(stream)), "grouped gemm launch");
      },
      nb::arg("plan_code"), nb::arg("dtype"), nb::arg("R"), nb::arg("N"), nb::arg("K"), nb::arg("group_size"),
      nb::arg("E"), nb::arg("x"), nb::arg("x_rows"), nb::arg("x_stride"), nb::arg("row_index"),
      nb::arg("row_offsets"), nb::arg("qweight"), nb::arg("qweight_stride"), nb::arg("scale_zero"),
      nb::arg("scale_zero_stride"), nb::arg("out"), nb::arg("out_stride"), nb::arg("workspace"),
      nb::arg("workspace_bytes"), nb::arg("device"), nb::arg("stream"));

  m.def(
      "dequantize_t",
      [](int layout, int dtype, int N, int K, int group_size, int n_begin, int n_count, uintptr_t qweight,
         uintptr_t scale_zero, uintptr_t wt, int device, uintptr_t stream) {
        if (n_begin < 0 || n_begin % kTileN != 0 || n_count < 1 || n_begin + n_count > N) {
          throw nb::value_error(("awqgemm: dequantize columns [" + std::to_string(n_begin) + ", " +
                                 std::to_string(n_begin + n_count) + ") must lie in [0, N=" + std::to_string(N) +
                                 ") and start on a multiple of 16")
                                    .c_str());
        }
        DeviceGuard guard(device);
        DeviceGuard::check(launch_dequantize_t(reinterpret_cast<const void*>(qweight),
                                               reinterpret_cast<const void*>(scale_zero), layout, to_dtype(dtype), N,
                                               K, checked_group_size(group_size, K), n_begin, n_count,
                                               reinterpret_cast<void*>(wt),
                                               reinterpret_cast<cudaStream_t>(stream)),
                           "dequantize launch");
      },
      nb::arg("layout"), nb::arg("dtype"), nb::arg("N"), nb::arg("K"), nb::arg("group_size"), nb::arg("n_begin"),
      nb::arg("n_count"), nb::arg("qweight"), nb::arg("scale_zero"), nb::arg("wt"), nb::arg("device"),
      nb::arg("stream"));

  // fused_moe's routing / activation / combine kernels (awqgemm/moe_routing.h).
  m.attr("max_route_experts") = kMaxRouteExperts;
  // Work-in-progress switches (awqgemm.testing.force keywords) -> their bit in the planners' `wip`
  // (WipFeature in dispatch.h; none now).
  nb::dict wip_features;
  m.attr("wip_features") = wip_features;

  m.def(
      "moe_route",
      [](uintptr_t topk_ids, int ids_type, uintptr_t topk_weights, int weights_type, bool weights_on_input,
         uintptr_t expert_map, int map_type, int64_t map_len, int64_t pairs, int top_k, int num_experts,
         uintptr_t order, uintptr_t offsets, uintptr_t token_of_row, uintptr_t pos, uintptr_t weights,
         uintptr_t block_counts, int device, uintptr_t stream) {
        if (ids_type != 0 && ids_type != 1) {
          throw nb::value_error("awqgemm: moe_route ids type must be 0 (int32) or 1 (int64)");
        }
        if (map_type != 0 && map_type != 1) {
          throw nb::value_error("awqgemm: moe_route map type must be 0 (int32) or 1 (int64)");
        }
        if (weights_type < 0 || weights_type > 2) {
          throw nb::value_error("awqgemm: moe_route weights type must be 0 (float16), 1 (bfloat16) or 2 (float32)");
        }
        if (num_experts < 1 || num_experts > kMaxRouteExperts) {
          throw nb::value_error(("awqgemm: moe_route handles 1.." + std::to_string(kMaxRouteExperts) +
                                 " local experts, got " + std::to_string(num_experts))
                                    .c_str());
        }
        if (top_k < 1 || pairs < 0 || pairs > kMaxRoutePairs || pairs % top_k != 0) {
          throw nb::value_error(("awqgemm: moe_route needs top_k >= 1 and 0 <= pairs <= 2^30, a multiple of top_k; "
                                 "got pairs = " +
                                 std::to_string(pairs) + ", top_k = " + std::to_string(top_k))
                                    .c_str());
        }
        if (offsets == 0 || (pairs > 0 && (topk_ids == 0 || order == 0 || token_of_row == 0 || pos == 0 ||
                                           weights == 0 || (!weights_on_input && topk_weights == 0)))) {
          throw nb::value_error("awqgemm: moe_route got a null pointer for an input or output");
        }
        if (expert_map != 0 && map_len < 0) throw nb::value_error("awqgemm: moe_route map_len must be >= 0");
        if (block_counts == 0 && route_scratch_ints(pairs, num_experts) > 0) {
          throw nb::value_error(("awqgemm: moe_route needs a scratch buffer of route_scratch_ints(" +
                                 std::to_string(pairs) + ", " + std::to_string(num_experts) + ") ints")
                                    .c_str());
        }
        RouteArgs a;
        a.topk_ids = reinterpret_cast<const void*>(topk_ids);
        a.topk_weights = reinterpret_cast<const void*>(topk_weights);
        a.expert_map = reinterpret_cast<const void*>(expert_map);
        a.map_len = map_len;
        a.pairs = static_cast<int>(pairs);
        a.top_k = top_k;
        a.num_experts = num_experts;
        a.ids_type = static_cast<IdsType>(ids_type);
        a.map_type = static_cast<IdsType>(map_type);
        a.weights_type = static_cast<WeightsType>(weights_type);
        a.weights_on_input = weights_on_input;
        a.order = reinterpret_cast<int64_t*>(order);
        a.offsets = reinterpret_cast<int32_t*>(offsets);
        a.token_of_row = reinterpret_cast<int32_t*>(token_of_row);
        a.pos = reinterpret_cast<int32_t*>(pos);
        a.weights = reinterpret_cast<float*>(weights);
        a.block_counts = reinterpret_cast<int32_t*>(block_counts);
        DeviceGuard guard(device);
        DeviceGuard::check(launch_moe_route(a, reinterpret_cast<cudaStream_t>(stream)), "moe_route launch");
      },
      nb::arg("topk_ids"), nb::arg("ids_type"), nb::arg("topk_weights"), nb::arg("weights_type"),
      nb::arg("weights_on_input"), nb::arg("expert_map"), nb::arg("map_type"), nb::arg("map_len"), nb::arg("pairs"),
      nb::arg("top_k"), nb::arg("num_experts"), nb::arg("order"), nb::arg("offsets"), nb::arg("token_of_row"),
      nb::arg("pos"), nb::arg("weights"), nb::arg("block_counts"), nb::arg("device"), nb::arg("stream"),
      "Stable sort of the pairs by local expert: order (int64), offsets, token_of_row, pos (int32) and fp32 router "
      "weights, into the caller's buffers; block_counts: route_scratch_ints(pairs, num_experts) int32 of scratch "
      "(0 where none is needed).");

  m.def(
      "route_scratch_ints",
      [](int64_t pairs, int num_experts) {
        if (pairs < 0 || pairs > kMaxRoutePairs || num_experts < 1 || num_experts > kMaxRouteExperts) {
          throw nb::value_error(("awqgemm: route_scratch_ints needs 0 <= pairs <= 2^30 and 1.." +
                                 std::to_string(kMaxRouteExperts) + " experts; got pairs = " + std::to_string(pairs) +
                                 ", experts = " + std::to_string(num_experts))
                                    .c_str());
        }
        return route_scratch_ints(pairs, num_experts);
      },
      nb::arg("pairs"), nb::arg("num_experts"),
      "int32 scratch elements moe_route needs for this many pairs (0: one block sorts them).");

  m.def(
      "moe_silu_mul",
      [](int dtype, int64_t rows, int64_t inter, uintptr_t h, uintptr_t act, int device, uintptr_t stream) {
        if (rows < 0 || inter < 1 || rows > INT32_MAX || inter > INT32_MAX / 2) {
          throw nb::value_error(("awqgemm: moe_silu_mul needs 0 <= rows < 2^31 and 1 <= inter < 2^30, got rows = " +
                                 std::to_string(rows) + ", inter = " + std::to_string(inter))
                                    .c_str());
        }
        if (rows > 0 && (h == 0 || act == 0)) throw nb::value_error("awqgemm: moe_silu_mul got a null pointer");
        const DType dt = to_dtype(dtype);
        DeviceGuard guard(device);
        DeviceGuard::check(launch_moe_silu_mul(dt, reinterpret_cast<const void*>(h), static_cast<int>(rows),
                                               static_cast<int>(inter), reinterpret_cast<void*>(act),
                                               reinterpret_cast<cudaStream_t>(stream)),
                           "moe_silu_mul launch");
      },
      nb::arg("dtype"), nb::arg("rows"), nb::arg("inter"), nb::arg("h"), nb::arg("act"), nb::arg("device"),
      nb::arg("stream"), "act[r, i] = silu(h[r, i]) * h[r, inter + i], fp32 math rounded once; h is [rows, 2 * inter].");

  m.def(
      "moe_combine",
      [](int dtype, bool fp32_out, uintptr_t y, int64_t rows, uintptr_t pos, uintptr_t weights, int64_t tokens,
         int top_k, int64_t hidden, uintptr_t out, int device, uintptr_t stream) {
        if (rows < 1 || rows > INT32_MAX || tokens < 0 || tokens > INT32_MAX || top_k < 1 || hidden < 1 ||
            hidden > INT32_MAX) {
          throw nb::value_error(("awqgemm: moe_combine needs rows >= 1, tokens >= 0, top_k >= 1, hidden >= 1 (each "
                                 "< 2^31), got rows = " +
                                 std::to_string(rows) + ", tokens = " + std::to_string(tokens) +
                                 ", top_k = " + std::to_string(top_k) + ", hidden = " + std::to_string(hidden))
                                    .c_str());
        }
        if (tokens > 0 && (y == 0 || pos == 0 || weights == 0 || out == 0)) {
          throw nb::value_error("awqgemm: moe_combine got a null pointer");
        }
        const DType dt = to_dtype(dtype);
        DeviceGuard guard(device);
        DeviceGuard::check(
            launch_moe_combine(dt, fp32_out, reinterpret_cast<const void*>(y), static_cast<int>(rows),
                               reinterpret_cast<const int32_t*>(pos), reinterpret_cast<const float*>(weights),
                               static_cast<int>(tokens), top_k, static_cast<int>(hidden), reinterpret_cast<void*>(out),
                               reinterpret_cast<cudaStream_t>(stream)),
            "moe_combine launch");
      },
      nb::arg("dtype"), nb::arg("fp32_out"), nb::arg("y"), nb::arg("rows"), nb::arg("pos"), nb::arg("weights"),
      nb::arg("tokens"), nb::arg("top_k"), nb::arg("hidden"), nb::arg("out"), nb::arg("device"), nb::arg("stream"),
      "out[t] = sum over slots j of weights[t, j] * y[pos[t, j]] in fp32 (torch's order), as fp32 or dtype.");

  m.def("build_info", []() {
    nb::dict d;
    d["version"] = AWQGEMM_VERSION;
    d["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
    d["cuda_architectures"] = AWQGEMM_CUDA_ARCHS;
    d["sass_archs"] = parse_archs(AWQGEMM_CUDA_ARCHS, false);
    d["ptx_archs"] = parse_archs(AWQGEMM_CUDA_ARCHS, true);
    d["arch_specific"] = have_sm90a() ? std::vector<std::string>{"90a"} : std::vector<std::string>{};
    std::vector<std::string> families{"sm70_m8n8k4", "sm75_m16n8k8", "sm80_m16n8k16"};
    if (have_sm90a()) families.push_back("sm90a_m64nNk16");
    d["kernel_families"] = families;
    return d;
  });

}
