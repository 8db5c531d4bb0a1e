"""Runs one awqgemm GEMM a few times, for profilers (ncu / nsys).

ncu --section SpeedOfLight python3 benchmarks/profile_one.py --k 4096 --n 28672 --m 1
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
    a = ap.parse_args()
    dtype = torch.float16 if a.dtype == "fp16" else torch.bfloat16
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


if __name__ == "__main__":
    main()
