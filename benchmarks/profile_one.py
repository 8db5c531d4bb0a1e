"""Runs one awqgemm GEMM a few times, for profilers (ncu / nsys).

ncu --section SpeedOfLight python3 benchmarks/profile_one.py --k 4096 --n 28672 --m 1
ncu -k regex:gemm_tc python3 benchmarks/profile_one.py --moe 128,8,2048,768 --m 128   # fused_moe, T = 128
python3 benchmarks/profile_one.py --k 4096 --n 6144 --m 64 --timeline   # kernels of one call inside a CUDA graph

--timeline captures --iters calls in a CUDA graph, replays it under torch.profiler and prints each
kernel's mean duration per call next to the replay's span per call: what a call costs on the GPU
beside its main kernel (split-K reduction, x staging, routing), and the gaps between launches.
"""

from __future__ import annotations

import argparse

import torch

import awqgemm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=28672)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--path", choices=[p for p in awqgemm.testing.PATHS if p != "reference"], default="fused")
    ap.add_argument("--family", choices=sorted(awqgemm.testing.FAMILIES), default="auto")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--wip", action="append", default=[], help="a work-in-progress switch of testing.force, on")
    ap.add_argument("--timeline", action="store_true", help="per-kernel times of one call, from a CUDA graph replay")
    ap.add_argument(
        "--moe",
        metavar="E,TOPK,HIDDEN,INTER",
        help="run fused_moe instead: E experts, top-k, hidden and intermediate sizes; --m is the tokens",
    )
    a = ap.parse_args()
    dtype = torch.float16 if a.dtype == "fp16" else torch.bfloat16
    if a.moe:
        run_moe(a, dtype)
        return
    awq = awqgemm.testing.random_awq(a.k, a.n, a.group, dtype, "cuda", seed=0)
    x = torch.randn(a.m, a.k, dtype=dtype, device="cuda")
    with awqgemm.testing.force(family=a.family, path=a.path, **{w: True for w in a.wip}):
        packed = awqgemm.pack_awq(*awq, a.group)  # inside the block: the sm70 family packs its own layout
        p = awqgemm.plan_info(a.m, a.n, a.k, dtype, "cuda")
        kind = "dequantize + dense matmul" if p["dense"] else f"{p['kernel']}, {p['tile_tokens']} tokens/tile"
        # the v11.1 plan flags (the launch still stages x for groups of 32 under tma_x)
        flags = "".join(f", {f}" for f in ("stream_k", "tma_x", "four_wg") if p.get(f))
        print(f"plan: family {p['family']}, {kind}, {p['splits']} K splits{flags}, workspace {p['workspace_bytes']} B")
        run = lambda: awqgemm.gemm(x, packed)
        if a.timeline:
            timeline(run, a.iters, f"K={a.k} N={a.n} M={a.m} {a.dtype}")
            return
        for _ in range(a.iters):
            run()
    torch.cuda.synchronize()


def timeline(run, iters: int, label: str) -> None:
    """Prints each kernel's mean device time per call and the graph replay's span per call."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    iters = max(iters, 5)
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            run()
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not kernels:
        print(f"timeline {label}: the profiler recorded no kernels")
        return
    kernels.sort(key=lambda e: e.time_range.start)
    span = kernels[-1].time_range.end - kernels[0].time_range.start
    busy = sum(e.time_range.end - e.time_range.start for e in kernels)
    print(f"timeline {label}: {span / iters:.2f} us per call (graph replay span), kernels {busy / iters:.2f} us")
    # Each call launches the same kernels in the same order: report them by position in the call (a
    # name can occur twice, e.g. MoE's two grouped GEMMs), with the gap before each.
    if len(kernels) % iters:
        print(f"  {len(kernels)} kernels over {iters} calls: not the same launches per call")
        return
    per_call = len(kernels) // iters
    for j in range(per_call):
        runs = kernels[j::per_call]
        dur = sum(e.time_range.end - e.time_range.start for e in runs) / iters
        gaps = [e.time_range.start - kernels[i * per_call + j - 1].time_range.end for i, e in enumerate(runs)]
        gap = sum(gaps[1:] if j == 0 else gaps) / max(1, len(gaps) - (j == 0))
        short = runs[0].name.split("(")[0].split("<")[0][-40:]
        print(f"  {dur:8.2f} us/call  (start {gap:+6.2f} us after the previous kernel's end)  {short}")


def run_moe(a: argparse.Namespace, dtype: torch.dtype) -> None:
    try:
        num, top_k, hidden, inter = (int(v) for v in a.moe.split(","))
    except ValueError:
        raise SystemExit(f"--moe wants E,TOPK,HIDDEN,INTER (four integers), got {a.moe!r}") from None

    from moe import draw_inputs, stacked_awq  # benchmarks/moe.py, beside this script: the same experts and routing

    w13 = awqgemm.pack_awq_experts(*stacked_awq(num, hidden, 2 * inter, dtype, "cuda", a.group), a.group)
    w2 = awqgemm.pack_awq_experts(*stacked_awq(num, inter, hidden, dtype, "cuda", a.group), a.group)
    ti, tw, x = draw_inputs(a.m, num, top_k, hidden, dtype, "cuda")
    print(f"fused_moe: {num} experts, top {top_k}, hidden {hidden}, intermediate {inter}, T = {a.m}")
    run = lambda: awqgemm.fused_moe(x, w13, w2, tw, ti)
    with awqgemm.testing.force(**{w: True for w in a.wip}):
        if a.timeline:
            timeline(run, a.iters, f"fused_moe E={num} top{top_k} H={hidden} I={inter} T={a.m} {a.dtype}")
            return
        for _ in range(a.iters):
            run()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
