"""Runs one awqgemm GEMM a few times, for profilers (ncu / nsys).

ncu --section SpeedOfLight python3 benchmarks/profile_one.py --k 4096 --n 28672 --m 1
ncu -k regex:gemm_tc python3 benchmarks/profile_one.py --moe 128,8,2048,768 --m 128   # fused_moe, T = 128
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
    with awqgemm.testing.force(family=a.family, path=a.path):
        packed = awqgemm.pack_awq(*awq, a.group)  # inside the block: the sm70 family packs its own layout
        p = awqgemm.plan_info(a.m, a.n, a.k, dtype, "cuda")
        kind = "dequantize + dense matmul" if p["dense"] else f"{p['kernel']}, {p['tile_tokens']} tokens/tile"
        print(f"plan: family {p['family']}, {kind}, {p['splits']} K splits, workspace {p['workspace_bytes']} B")
        for _ in range(a.iters):
            awqgemm.gemm(x, packed)
    torch.cuda.synchronize()


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
    for _ in range(a.iters):
        awqgemm.fused_moe(x, w13, w2, tw, ti)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
