"""Runs one awqgemm GEMM a few times, for profilers (ncu / nsys).

ncu --section SpeedOfLight python3 benchmarks/profile_one.py --k 4096 --n 28672 --m 1
"""

from __future__ import annotations

import argparse

import torch

import awqgemm
from awqgemm import _layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=28672)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--path", choices=["auto", "fused", "dense"], default="fused")
    ap.add_argument("--family", choices=sorted(awqgemm.testing.FAMILIES), default="auto")
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    dtype = torch.float16 if a.dtype == "fp16" else torch.bfloat16
    q = torch.randint(0, 16, (a.k, a.n), dtype=torch.uint8, device="cuda")
    z = torch.randint(0, 16, (a.k // a.group, a.n), dtype=torch.uint8, device="cuda")
    s = (torch.rand(a.k // a.group, a.n, device="cuda") / a.k).to(dtype)
    packed = awqgemm.pack_awq(_layout.pack_awq_int4(q), _layout.pack_awq_int4(z), s, a.group)
    x = torch.randn(a.m, a.k, dtype=dtype, device="cuda")
    from awqgemm._ext import _C

    dev = torch.cuda.current_device()
    path_code = {"auto": 0, "fused": 1, "dense": 2}.get(a.path, 0)
    fam_code = awqgemm.testing.FAMILIES[a.family]
    code, family, _, dense, ws = _C.plan(fam_code, path_code, 0 if a.dtype == "fp16" else 1, a.m, a.n, a.k, dev)
    kind = "dense" if dense else f"split-K workspace {ws} B = {ws // max(1, 4 * a.m * a.n)} splits"
    print(f"plan {code:#x}: family sm{family}, {kind}", flush=True)
    with awqgemm.testing.force(family=a.family, path=a.path):
        for _ in range(a.iters):
            awqgemm.gemm(x, packed)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
