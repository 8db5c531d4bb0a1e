"""MoE benchmark: awqgemm.fused_moe (grouped AWQ kernels) vs vLLM's Marlin MoE (``fused_marlin_moe`` on
the same AWQ experts, converted the way vLLM 0.26.0's ``AutoAWQMoEMethod`` converts them) and a dense-fp16
per-expert baseline (torch ops, routing read back to the host outside the timed region).

Shapes: Qwen3-30B-A3B (E=128, top-8, H=2048, I=768) and Mixtral-8x7B (E=8, top-2, H=4096, I=14336),
tokens 1..4096, uniform random routing, group 128. awqgemm and Marlin are timed the same way: median
of CUDA-graph replays (host excluded), plus eager calls. Each row also checks the outputs: relative
error (Frobenius) of awqgemm and of Marlin against the dense computation, and Marlin against awqgemm.
Prints a table; writes JSON (+ PNG when matplotlib is there) under --out.

    python benchmarks/moe.py --out benchmarks/results [--tokens 1,8,64,512,4096] [--deadline 240]
    python benchmarks/moe.py --dry-run --out /tmp/x   # CPU: tiny shapes, FAKE timings (tests the pipeline)

Marlin needs a CUDA vLLM: on the device machine, after ``ci/device_vllm.sh`` has installed vLLM 0.26.0,
``source ~/vsite/env`` first. Without it (or on CPU) the row's ``marlin_note`` says why it was not run.

How vLLM 0.26.0 serves an AWQ MoE layer (``quantization/auto_awq.py: AutoAWQMoEMethod``, on CUDA the
MARLIN backend of ``fused_moe/oracle/int_wna16.py``), mirrored by :func:`build_marlin`:

* checkpoint tensors ``w13_qweight [E, H, 2I/8]`` (gate columns, then up), ``w13_qzeros [E, H/G, 2I/8]``,
  ``w13_scales [E, H/G, 2I]``, ``w2_* [E, I, H/8] ...``: AWQ packing along N, exactly what
  ``pack_awq_experts`` takes;
* ``_process_awq_weights_marlin``: ``marlin_moe_padded_intermediate`` (I padded to lcm(64, G); our shapes
  need none, padded ones are refused here), ``ops.awq_marlin_moe_repack(w, perm=[E, 0] int32, size_k,
  size_n, num_bits=4)``, ``marlin_moe_permute_scales(s, size_k=I, size_n, G)`` (vLLM passes I as size_k
  for w13 too), ``moe_awq_to_marlin_zero_points(z, size_k=rows of z, size_n, 4)``;
* ``MarlinExperts.apply`` -> ``fused_marlin_moe(..., quant_type_id=uint4 (zero points), w1_zeros,
  w2_zeros, sort_indices = the [E, 0] perms, g_idx None, is_k_full=True, output, moe_sum=ops.moe_sum)``
  with fp32 router weights; no workspace passed (``fused_marlin_moe`` allocates it, as in vLLM).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: (experts, top_k, hidden, intermediate)
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "mixtral-8x7b": (8, 2, 4096, 14336),
}
TOKENS = (1, 4, 16, 64, 256, 1024, 4096)
GROUP = 128
MARLIN_WRITTEN_FOR = "0.26.0"
MARLIN_GROUPS = (-1, 32, 64, 128)  # vLLM 0.26 check_moe_marlin_supports_layer
DRY_BW = 1e12  # dry run: an invented bandwidth for the fake timings' floor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds; rows not reached are left out")
    p.add_argument("--no-marlin", action="store_true", help="skip vLLM's Marlin MoE even where it runs")
    p.add_argument(
        "--wip",
        action="store_true",
        help="also time awqgemm with the work-in-progress switches on, one column set per variant: "
        + "; ".join(f"awqgemm_{v}_*: force({', '.join(f'{k}=True' for k in sw)})" for v, sw in WIP_VARIANTS.items()),
    )
    p.add_argument(
        "--skip-wip",
        default="",
        help="comma list of switches (e.g. grouped_wgmma) whose --wip variants to leave out (ci/device_kernels.sh: "
        "a work-in-progress feature whose GPU tests failed in the same run)",
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, fake timings: tests the pipeline")
    args = p.parse_args(argv)
    bad = [s for s in args.shapes.split(",") if s not in SHAPES]
    if bad:
        p.error(f"unknown shape(s) {bad}; known: {list(SHAPES)}")
    try:
        args.token_list = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        p.error(f"--tokens must be comma-separated ints, got {args.tokens!r}")
    if not args.token_list or min(args.token_list) < 1:
        p.error(f"--tokens must be positive, got {args.tokens!r}")
    if args.replays < 1:
        p.error(f"--replays must be >= 1, got {args.replays}")
    switches = {sw for sws in WIP_VARIANTS.values() for sw in sws}
    skip = [sw for sw in args.skip_wip.split(",") if sw]
    if set(skip) - switches:
        p.error(f"--skip-wip: unknown switch(es) {sorted(set(skip) - switches)}; known: {sorted(switches)}")
    args.wip_variants = [v for v, sws in WIP_VARIANTS.items() if args.wip and not set(sws) & set(skip)]
    if skip and args.wip:
        print(
            f"--wip variants left out for {','.join(skip)}: "
            f"{sorted(set(WIP_VARIANTS) - set(args.wip_variants)) or 'none'}",
            flush=True,
        )
    return args


def stacked_awq(num, k, n, dtype, device, group=GROUP):
    from awqgemm.testing import random_awq

    parts = [random_awq(k, n, group, dtype, device, seed=e) for e in range(num)]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(3))


def draw_inputs(tokens, num, top_k, hidden, dtype, device):
    """One row's routing (top-k ids, softmax weights) and activations, seeded by the token count."""
    gen = torch.Generator().manual_seed(tokens)
    ti = torch.rand(tokens, num, generator=gen).topk(top_k, dim=1).indices.to(torch.int32).to(device)
    tw = torch.softmax(torch.randn(tokens, top_k, generator=gen), dim=1).to(device)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype).to(device)
    return ti, tw, x


class Timer:
    """Median us per call: CUDA graph replays (host excluded) or eager calls between events. The dry
    run calls the function twice (so every contender runs) and returns ``hint_us`` jittered: FAKE."""

    def __init__(self, replays: int, dry: bool):
        self.replays, self.dry = replays, dry
        self.rng = random.Random(0)

    def __call__(self, fn, graph: bool, hint_us: float = 1.0) -> float:
        if self.dry:
            fn()
            fn()
            return hint_us * (1.5 if not graph else 1.0) * self.rng.uniform(0.97, 1.03)
        fn()
        torch.cuda.synchronize()
        if graph:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn()
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                fn()
            fn = g.replay
            fn()
        times = []
        for _ in range(self.replays):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        return statistics.median(times)


def bind(fn, *args):
    return lambda: fn(*args)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.float(), ref.float()
    return (torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


# --wip: the work-in-progress switches (awqgemm.testing.force) each variant turns on.
WIP_VARIANTS: dict[str, tuple[str, ...]] = {}


def route_only(ti, tw, num, dry):
    """fused_moe's routing alone: the routing kernels and the torch ops. The dry run (CPU) times the
    torch ops twice."""
    from awqgemm.moe import route_torch, route_with_kernel

    kernel = route_torch if dry else route_with_kernel
    return bind(kernel, ti, tw, None, num, False), bind(route_torch, ti, tw, None, num, False)


def gemms_only(awqgemm, x, w13, w2, tw, ti):
    """fused_moe's two grouped GEMMs alone, on routing and an activation computed beforehand: the
    time fused_moe spends outside them (routing, activation, combine, launches) is the difference."""
    from awqgemm.moe import route_torch, silu_mul_torch

    _, offsets, token_of_row, _, _ = route_torch(ti, tw, None, w13.num_experts, False)
    act = silu_mul_torch(awqgemm.moe_gemm(x, w13, offsets, token_of_row))

    def run():
        return awqgemm.moe_gemm(x, w13, offsets, token_of_row), awqgemm.moe_gemm(act, w2, offsets)

    return run


def dense_baseline(x, w13d, w2d, tw, ti):
    """fp16 dense per expert with torch ops; the routing is read back before timing (a host sync
    a real layer would pay), so this times the matmuls, activation and combine only."""
    num, _, two_i = w13d.shape
    inter = two_i // 2
    ids = ti.reshape(-1).long()
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=num).tolist()
    tok = order // ti.shape[1]
    wts = tw.reshape(-1)[order].to(x.dtype)

    def run():
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        start = 0
        for e, c in enumerate(counts):
            if c:
                rows = tok[start : start + c]
                h = x[rows] @ w13d[e]
                a = F.silu(h[:, :inter]) * h[:, inter:]
                out.index_add_(0, rows, ((a @ w2d[e]) * wts[start : start + c, None]).float())
            start += c
        return out.to(x.dtype)

    return run


# ----------------------------------------------------------------------------- vLLM's Marlin MoE


class PeerUnsupported(ValueError):
    """vLLM would not run its Marlin MoE for this layer (shape, group)."""


def probe_marlin(device: str) -> tuple[dict | None, str]:
    """(vLLM's Marlin MoE API, "") or (None, why it cannot run here). Feature-detects every piece."""
    if device != "cuda":
        why = "dry run on CPU" if device == "cpu" else f"device {device}"
        return None, f"{why}: vLLM's Marlin MoE needs a CUDA GPU"
    try:
        import vllm
    except Exception as exc:  # any import failure means "not available here"
        return None, f"vllm not importable: {type(exc).__name__}: {exc} (on the device: source ~/vsite/env)"
    version = str(getattr(vllm, "__version__", "?"))
    try:
        from vllm import _custom_ops as ops
        from vllm.model_executor.layers.fused_moe.experts.marlin_moe import fused_marlin_moe
        from vllm.model_executor.layers.quantization.utils import marlin_utils
        from vllm.scalar_type import scalar_types
    except Exception as exc:
        return None, f"vllm {version}: Marlin MoE import failed: {type(exc).__name__}: {exc}"
    needed = (
        ("ops", ops, ("awq_marlin_moe_repack", "moe_wna16_marlin_gemm", "moe_sum")),
        ("marlin_utils", marlin_utils, ("marlin_moe_padded_intermediate", "marlin_moe_permute_scales")),
        ("marlin_utils", marlin_utils, ("moe_awq_to_marlin_zero_points",)),
    )
    missing = [f"{label}.{n}" for label, mod, names in needed for n in names if not hasattr(mod, n)]
    for lib, op in (("_C", "awq_marlin_repack"), ("_moe_C", "moe_wna16_marlin_gemm"), ("_moe_C", "moe_sum")):
        if not hasattr(getattr(torch.ops, lib), op):
            missing.append(f"torch.ops.{lib}.{op}")
    if missing:
        return None, f"vllm {version} lacks {', '.join(missing)} (this benchmark follows vLLM {MARLIN_WRITTEN_FOR})"
    api = {
        "ops": ops,
        "mu": marlin_utils,
        "fused_marlin_moe": fused_marlin_moe,
        "uint4_id": scalar_types.uint4.id,
        "version": version,
    }
    return api, ""


def build_marlin(api: dict, ck13, ck2, group: int):
    """vLLM's weight preparation of an AWQ MoE layer for Marlin; returns ``run(x, topk_weights, topk_ids)``."""
    ops, mu = api["ops"], api["mu"]
    qw13, qz13, s13 = ck13
    qw2, qz2, s2 = ck2
    num, hidden, _ = qw13.shape
    inter = qw2.shape[1]
    if group not in MARLIN_GROUPS:
        raise PeerUnsupported(f"group {group} not in vLLM's Marlin MoE groups {MARLIN_GROUPS}")
    if hidden % 128 or (group > 0 and inter % group):
        raise PeerUnsupported(f"vLLM's Marlin MoE wants H % 128 == 0 and I % G == 0, got H={hidden}, I={inter}")
    if mu.marlin_moe_padded_intermediate(inter, group) != inter:
        raise PeerUnsupported(f"I={inter} needs vLLM's Marlin tile padding, which this benchmark does not mirror")
    perm = torch.empty((num, 0), dtype=torch.int32, device=qw13.device)  # w*_g_idx_sort_indices
    w1 = ops.awq_marlin_moe_repack(qw13, perm, size_k=hidden, size_n=qw13.shape[2] * 8, num_bits=4)
    w2 = ops.awq_marlin_moe_repack(qw2, perm, size_k=inter, size_n=qw2.shape[2] * 8, num_bits=4)
    w1_scale = mu.marlin_moe_permute_scales(s=s13, size_k=inter, size_n=s13.shape[2], group_size=group)
    w2_scale = mu.marlin_moe_permute_scales(s=s2, size_k=inter, size_n=s2.shape[2], group_size=group)
    w1_zeros = mu.moe_awq_to_marlin_zero_points(qz13, size_k=qz13.shape[1], size_n=qz13.shape[2] * 8, num_bits=4)
    w2_zeros = mu.moe_awq_to_marlin_zero_points(qz2, size_k=qz2.shape[1], size_n=qz2.shape[2] * 8, num_bits=4)
    fused_marlin_moe, qtype = api["fused_marlin_moe"], api["uint4_id"]

    def moe_sum(inp, out, topk_ids, expert_map):  # MarlinExperts.moe_sum without an expert map
        ops.moe_sum(inp, out)

    def run(x, topk_weights, topk_ids):
        out = torch.empty_like(x)
        fused_marlin_moe(
            hidden_states=x,
            w1=w1,
            w2=w2,
            bias1=None,
            bias2=None,
            w1_scale=w1_scale,
            w2_scale=w2_scale,
            topk_weights=topk_weights,
            topk_ids=topk_ids,
            quant_type_id=qtype,
            apply_router_weight_on_input=False,
            global_num_experts=num,
            moe_sum=moe_sum,
            expert_map=None,
            g_idx1=None,
            g_idx2=None,
            sort_indices1=perm,
            sort_indices2=perm,
            w1_zeros=w1_zeros,
            w2_zeros=w2_zeros,
            is_k_full=True,
            output=out,
        )
        return out

    return run


def standin_marlin_api() -> dict:
    """Dry run only: a CPU stand-in for vLLM's Marlin MoE API with the 0.26.0 call signatures, so that
    :func:`build_marlin` and its runner (keywords, the output buffer, moe_sum) run in the CPU test.
    Its conversions are the identity and its ``fused_marlin_moe`` dequantizes the AWQ tensors it is
    handed: it checks the plumbing, not vLLM's kernels."""
    import types

    from awqgemm import dequantize_awq

    def awq_marlin_moe_repack(b_q_weight, perm, size_k, size_n, num_bits, is_a_8bit=False):
        assert b_q_weight.shape[1] == size_k and b_q_weight.shape[2] * 8 == size_n and num_bits == 4
        assert perm.shape == (b_q_weight.shape[0], 0) and perm.dtype == torch.int32
        return b_q_weight

    def marlin_moe_permute_scales(s, size_k, size_n, group_size, is_a_8bit=False):
        assert s.shape[2] == size_n and group_size == GROUP
        return s

    def moe_awq_to_marlin_zero_points(q_zp_packed, size_k, size_n, num_bits, is_a_8bit=False):
        assert q_zp_packed.shape[1] == size_k and q_zp_packed.shape[2] * 8 == size_n and num_bits == 4
        return q_zp_packed

    def moe_sum(input, output, topk_ids=None, expert_map=None):  # vLLM 0.26.0 names
        torch.sum(input, dim=1, out=output)

    def fused_marlin_moe(
        hidden_states,
        w1,
        w2,
        bias1,
        bias2,
        w1_scale,
        w2_scale,
        topk_weights,
        topk_ids,
        quant_type_id,
        apply_router_weight_on_input=False,
        global_num_experts=-1,
        moe_sum=None,
        expert_map=None,
        g_idx1=None,
        g_idx2=None,
        sort_indices1=None,
        sort_indices2=None,
        w1_zeros=None,
        w2_zeros=None,
        is_k_full=True,
        output=None,
    ):
        assert topk_weights.dtype == torch.float32 and hidden_states.is_contiguous()
        tokens, top_k = topk_ids.shape
        inter = w2.shape[1]
        slots = torch.zeros(tokens, top_k, hidden_states.shape[1], dtype=hidden_states.dtype)
        for t in range(tokens):
            for j in range(top_k):
                e = int(topk_ids[t, j])
                h = hidden_states[t : t + 1].float() @ dequantize_awq(w1[e], w1_zeros[e], w1_scale[e], GROUP).float()
                a = (F.silu(h[:, :inter]) * h[:, inter:]).to(hidden_states.dtype).float()
                y = a @ dequantize_awq(w2[e], w2_zeros[e], w2_scale[e], GROUP).float()
                slots[t, j] = (y[0] * topk_weights[t, j]).to(hidden_states.dtype)
        moe_sum(slots, output, topk_ids, expert_map)
        return None

    return {
        "ops": types.SimpleNamespace(awq_marlin_moe_repack=awq_marlin_moe_repack, moe_sum=moe_sum),
        "mu": types.SimpleNamespace(
            marlin_moe_padded_intermediate=lambda i, g: i,
            marlin_moe_permute_scales=marlin_moe_permute_scales,
            moe_awq_to_marlin_zero_points=moe_awq_to_marlin_zero_points,
        ),
        "fused_marlin_moe": fused_marlin_moe,
        "uint4_id": 0,
        "version": "CPU stand-in (dry run; not vLLM)",
    }


# ----------------------------------------------------------------------------- main


def fake_us(kind: str, floor_us: float, tokens: int) -> float:
    """Dry run only: invented times (never reported as measurements)."""
    return floor_us * {"awqgemm": 3.0, "gemms": 2.0, "marlin": 2.5, "dense": 20.0}[kind] + 0.05 * tokens


def main(argv=None):
    args = parse_args(argv)
    import awqgemm
    from awqgemm.moe import grouped_plan_info

    dtype = getattr(torch, args.dtype)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("benchmarks/moe.py: no CUDA GPU; use --dry-run to test the pipeline on CPU", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda"
    shapes = {n: SHAPES[n] for n in args.shapes.split(",")}
    tokens = args.token_list
    if dry:
        shapes = {n: (min(e, 8), min(k, 2), 256, 128) for n, (e, k, _, _) in shapes.items()}
        tokens = tokens[:3]
    start = time.time()
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu-dryrun"
    bw = DRY_BW if dry else 3.35e12 if "H100" in gpu else 4.8e12 if "H200" in gpu else None
    timer = Timer(args.replays, dry)
    if args.no_marlin:
        api, marlin_why = None, "--no-marlin"
    elif dry:
        api, marlin_why = standin_marlin_api(), ""
    else:
        api, marlin_why = probe_marlin(device)
    print(f"vLLM Marlin MoE: {'vllm ' + api['version'] if api else 'not run: ' + marlin_why}", flush=True)
    if dry:
        print("DRY RUN: tiny shapes on CPU, FAKE timings", flush=True)
    rows = []
    for name, (num, top_k, hidden, inter) in shapes.items():
        if time.time() - start > args.deadline:
            break
        ck13 = stacked_awq(num, hidden, 2 * inter, dtype, device)
        ck2 = stacked_awq(num, inter, hidden, dtype, device)
        w13 = awqgemm.pack_awq_experts(*ck13, GROUP)
        w2 = awqgemm.pack_awq_experts(*ck2, GROUP)
        w13d = torch.stack([awqgemm.dequantize_awq(*(t[e] for t in ck13), GROUP) for e in range(num)])
        w2d = torch.stack([awqgemm.dequantize_awq(*(t[e] for t in ck2), GROUP) for e in range(num)])
        expert_bytes = (w13.qweight[0].numel() + w2.qweight[0].numel()) * 4 + (
            w13.scales[0].numel() + w2.scales[0].numel()
        ) * w13.scales.element_size()
        marlin, shape_why = None, marlin_why
        if api is not None:
            try:
                marlin = build_marlin(api, ck13, ck2, GROUP)
            except PeerUnsupported as exc:
                shape_why = f"unsupported: {exc}"
            except Exception as exc:
                shape_why = f"weight conversion failed: {type(exc).__name__}: {exc}"
        for t in tokens:
            if time.time() - start > args.deadline:
                print(f"deadline reached: {name} from T={t} on not run", file=sys.stderr)
                break
            ti, tw, x = draw_inputs(t, num, top_k, hidden, dtype, device)
            active = int(torch.unique(ti).numel())
            floor = active * expert_bytes / bw * 1e6 if bw else None
            row = {"shape": name, "tokens": t, "experts": num, "top_k": top_k, "active_experts": active}
            if floor is not None:
                row["awq_weight_floor_us"] = floor
            if device == "cuda":
                row["plan_gate_up"] = grouped_plan_info(t * top_k, num, 2 * inter, hidden, dtype)
                row["plan_down"] = grouped_plan_info(t * top_k, num, hidden, inter, dtype)
            hint = floor or 1.0
            fn = bind(awqgemm.fused_moe, x, w13, w2, tw, ti)
            dense = dense_baseline(x, w13d, w2d, tw, ti)
            row["awqgemm_graph_us"] = timer(fn, graph=True, hint_us=fake_us("awqgemm", hint, t))
            gemms = gemms_only(awqgemm, x, w13, w2, tw, ti)
            row["awqgemm_gemms_graph_us"] = timer(gemms, graph=True, hint_us=fake_us("gemms", hint, t))
            row["awqgemm_eager_us"] = timer(fn, graph=False, hint_us=fake_us("awqgemm", hint, t))
            row["dense_fp16_eager_us"] = timer(dense, graph=False, hint_us=fake_us("dense", hint, t))
            got, ref = fn(), dense()
            row["rel_err_vs_dense"] = rel_err(got, ref)
            # The sort alone, the routing kernels vs torch ops, at this T * k.
            if device == "cuda" or dry:
                kernel_route, torch_route = route_only(ti, tw, num, dry)
                row["route_kernel_graph_us"] = timer(kernel_route, graph=True, hint_us=1 + 0.01 * t * top_k)
                row["route_torch_graph_us"] = timer(torch_route, graph=True, hint_us=20 + 0.005 * t * top_k)
            for v in args.wip_variants:
                with awqgemm.testing.force(**dict.fromkeys(WIP_VARIANTS[v], True)):
                    if device == "cuda":
                        row[f"{v}_plan_gate_up"] = grouped_plan_info(t * top_k, num, 2 * inter, hidden, dtype)
                    row[f"awqgemm_{v}_graph_us"] = timer(fn, graph=True, hint_us=fake_us("awqgemm", hint, t))
                    row[f"awqgemm_{v}_gemms_graph_us"] = timer(gemms, graph=True, hint_us=fake_us("gemms", hint, t))
                    row[f"awqgemm_{v}_eager_us"] = timer(fn, graph=False, hint_us=fake_us("awqgemm", hint, t))
                    row[f"awqgemm_{v}_rel_err_vs_dense"] = rel_err(fn(), ref)
            if marlin is not None:
                mfn = bind(marlin, x, tw, ti)
                try:
                    row["marlin_graph_us"] = timer(mfn, graph=True, hint_us=fake_us("marlin", hint, t))
                    row["marlin_eager_us"] = timer(mfn, graph=False, hint_us=fake_us("marlin", hint, t))
                    mout = mfn()
                    row["marlin_rel_err_vs_dense"] = rel_err(mout, ref)
                    row["marlin_rel_err_vs_awqgemm"] = rel_err(mout, got)
                    row["awqgemm_speedup_vs_marlin"] = row["marlin_graph_us"] / row["awqgemm_graph_us"]
                except Exception as exc:
                    row["marlin_note"] = f"run failed: {type(exc).__name__}: {exc}"
            else:
                row["marlin_note"] = shape_why
            rows.append(row)
            mtxt = (
                f"marlin {row['marlin_graph_us']:9.1f} us (err {row['marlin_rel_err_vs_dense']:.1e}, "
                f"awqgemm x{row['awqgemm_speedup_vs_marlin']:.2f})"
                if "marlin_graph_us" in row
                else f"marlin: {row['marlin_note']}"
            )
            for v in args.wip_variants:
                wip_us, wip_err = row[f"awqgemm_{v}_graph_us"], row[f"awqgemm_{v}_rel_err_vs_dense"]
                mtxt += f"  {v} graph {wip_us:9.1f} us (err {wip_err:.1e})"
            plan = row.get("plan_gate_up")
            if "route_kernel_graph_us" in row:
                mtxt += f"  route kernel/torch {row['route_kernel_graph_us']:.1f}/{row['route_torch_graph_us']:.1f} us"
            print(
                f"{name:14s} T={t:5d} active={active:3d}  awqgemm graph {row['awqgemm_graph_us']:9.1f} us  "
                f"(GEMMs {row['awqgemm_gemms_graph_us']:9.1f} us)  "
                f"eager {row['awqgemm_eager_us']:9.1f} us  dense-fp16 {row['dense_fp16_eager_us']:9.1f} us  "
                f"floor {row.get('awq_weight_floor_us', math.nan):7.1f} us  "
                + (f"gate_up {plan.get('tile_tokens')}x{plan.get('splits')}  " if plan else "")
                + f"err {row['rel_err_vs_dense']:.1e}  {mtxt}",
                flush=True,
            )
        del w13d, w2d
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    tag = gpu.lower().replace(" ", "-").replace("nvidia-", "")[:24]
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"moe-{tag}-{stamp}" + ("-dry" if dry else ""))
    info = {
        "gpu": gpu,
        "dtype": args.dtype,
        "group": GROUP,
        "dry_run": dry,
        "timings": "FAKE (dry run)" if dry else "median of CUDA-graph replays / eager calls",
        "marlin": {"vllm": api["version"] if api else None, "why_not": marlin_why or None},
        "build": awqgemm.build_info(),
        "rows": rows,
    }
    with open(base + ".json", "w") as f:
        json.dump(info, f, indent=1, default=str)
    if not dry and rows:
        plot(base + ".png", rows, shapes, gpu)
    print(f"wrote {base}.json")
    return 0


def plot(path, rows, shapes, gpu):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
    for ax, name in zip(axes[0], shapes, strict=False):
        rs = [r for r in rows if r["shape"] == name]
        if not rs:
            continue
        for key, label in (
            ("awqgemm_graph_us", "awqgemm (graph)"),
            ("awqgemm_gemms_graph_us", "awqgemm: its two grouped GEMMs alone (graph)"),
            ("marlin_graph_us", "vLLM Marlin MoE (graph)"),
            ("dense_fp16_eager_us", "dense fp16 per expert (eager)"),
            ("awq_weight_floor_us", "int4 weight-read floor"),
        ):
            pts = [(r["tokens"], r[key]) for r in rs if key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="us per MoE layer", title=f"{name} ({gpu})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
