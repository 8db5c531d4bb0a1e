"""The sweep: the order of (shape, group, dtype) blocks, a modeled run time, and measuring one block."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
import zlib
from collections.abc import Sequence
from typing import Any

import torch

from .contenders import TurboMindStatus, build_contenders
from .report import CHECK_M, CHECK_TOL, derive, new_row
from .shapes import DTYPES, GROUP_MAIN, TPS, MiB, Shape, awq_bytes, copies_for, dense_bytes
from .timing import FakeTimer, GraphTimer, eager_us, fake_hint, short_error


@dataclasses.dataclass
class Block:
    shape: Shape
    G: int
    dname: str


def plan_blocks(shapes: Sequence[Shape], dnames: Sequence[str], groups: Sequence[int], group_shape: str) -> list[Block]:
    """Measurement order, most important first (so a deadline cuts the least useful part):
    fp16 TP1, fp16 TP2, bf16 TP1, bf16 TP2, then the extra group sizes."""
    blocks = []
    for dname in dnames:
        for tp in TPS:
            for s in shapes:
                if s.tp == tp and GROUP_MAIN in groups:
                    blocks.append(Block(s, GROUP_MAIN, dname))
    for g in groups:
        if g == GROUP_MAIN:
            continue
        for dname in dnames:
            for s in shapes:
                if s.label == group_shape or (group_shape == "all"):
                    blocks.append(Block(s, g, dname))
    return blocks


def plan_estimate(blocks: Sequence[Block], ms: Sequence[int], args: argparse.Namespace) -> dict[str, float]:
    """A rough model of the run's GPU time (H100-like ceilings, every contender at 1.3x its own floor,
    forced fused 3x at M >= 1024), for choosing filters; not a measurement."""
    bw, rate, sleep_s = 3.0e12, 6.5e14, 100e-6
    calls = graphs = 0
    gpu = 0.0
    for b in blocks:
        K, N, G = b.shape.K, b.shape.N, b.G
        for M in ms:
            R = copies_for(b.shape, G, M, args.rotate_mib * MiB, args.max_copies)
            fl = 2.0 * M * N * K
            awq = max(awq_bytes(M, K, N, G) / bw, fl / rate)
            dense = max(dense_bytes(M, K, N) / bw, fl / rate)
            per = {
                "auto": awq if M < 256 else dense + K * N * 2.5 / bw,
                "a80": awq * (2 if M >= 256 else 1),
                "fused": awq * (3 if M >= 1024 else 1),
                "wt": awq * (2 if M >= 1024 else 1),
                "wg": awq * 1.3,
                "autox": awq if M < 256 else dense + K * N * 2.5 / bw,
                "dpath": dense + K * N * 2.5 / bw,
                "cublas": dense,
                "tm": awq * 2,
                "machete": awq * 1.3,
                "marlin": awq * 1.5,
            }
            for c in args.contenders:
                if c == "tm" and (b.dname != "fp16" or G != 128):
                    continue
                if c in ("fused", "wt") and 0 < args.fused_max_m < M:
                    continue
                calls += R
                graphs += 1
                gpu += (args.replays + args.warmup) * (1.3 * per[c] * R + sleep_s) + 2 * 1.3 * per[c]
    return {"calls": calls, "graphs": graphs, "gpu_s": gpu}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    d = (out.float() - ref).norm().item()
    r = ref.norm().item()
    return d / r if r > 0 else float("inf")


def run_block(
    blk: Block,
    ms: Sequence[int],
    args: argparse.Namespace,
    timer: GraphTimer | FakeTimer,
    ceil: dict[str, Any],
    tm: TurboMindStatus,
    device: torch.device,
    deadline: float,
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
) -> str:
    """Measures every M of one (shape, group, dtype); appends rows and checks. Returns a progress summary."""
    shape, G, dname = blk.shape, blk.G, blk.dname
    dtype = DTYPES[dname]
    K, N = shape.K, shape.N
    rotate = args.rotate_mib * MiB
    if time.monotonic() > deadline:
        for M in ms:
            row = new_row(shape, G, dname, M, copies_for(shape, G, M, rotate, args.max_copies), ceil, device)
            row["skipped"] = "deadline"
            rows.append(row)
        return "skipped (deadline)"
    R = max(copies_for(shape, G, M, rotate, args.max_copies) for M in ms)
    seed = zlib.crc32(f"{shape.label}/{G}/{dname}".encode())
    contenders, unavailable, w_dense, cleanup = build_contenders(shape, G, dname, R, device, args.contenders, tm, seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1)

    # Correctness first: every contender against an fp32 product with the dequantized weight.
    for M in CHECK_M:
        x = torch.randn(M, K, dtype=dtype, device=device, generator=gen)
        ref = x.float() @ w_dense.float()
        for c, con in contenders.items():
            chk: dict[str, Any] = {"shape": shape.label, "K": K, "N": N, "group": G, "dtype": dname, "M": M,
                                   "contender": c, "rel_err": None, "ok": False}  # fmt: skip
            try:
                with con.ctx():
                    out = con.fn(x, 0)
                chk["rel_err"] = rel_err(out, ref)
                chk["ok"] = (
                    math.isfinite(chk["rel_err"]) and chk["rel_err"] <= CHECK_TOL[dname] and tuple(out.shape) == (M, N)
                )
                del out
            except Exception as exc:
                chk["error"] = short_error(exc)
            checks.append(chk)
        del x, ref
    del w_dense

    n_done = 0
    fails: dict[str, int] = {}  # consecutive timing failures per contender: 2 in a row drop it for this block
    for M in ms:
        RM = copies_for(shape, G, M, rotate, args.max_copies)
        row = new_row(shape, G, dname, M, RM, ceil, device)
        row["errors"].update(unavailable)
        if time.monotonic() > deadline:
            row["skipped"] = "deadline"
            rows.append(row)
            continue
        nx = max(1, min(RM, math.ceil(rotate / (M * K * 2))))
        xs = torch.randn(nx, M, K, dtype=dtype, device=device, generator=gen)
        for c, con in contenders.items():
            if c in ("fused", "wt") and 0 < args.fused_max_m < M:
                continue
            if fails.get(c, 0) >= 2:
                row["errors"][c] = f"not timed: failed twice in this block ({row_errors_last(rows, c)})"
                continue
            calls = [lambda x=xs[i % nx], i=i, fn=con.fn: fn(x, i) for i in range(RM)]
            t = timer.time(calls, con.ctx, fake_hint(c, M, K, N, G, ceil, dname))
            if t.error:
                row["errors"][c] = t.error
                fails[c] = fails.get(c, 0) + 1
            else:
                row["us"][c], row["min_us"][c], row["iqr_pct"][c] = t.us, t.min_us, t.iqr_pct
                fails[c] = 0
        if "auto" in contenders and device.type == "cuda" and not args.dry_run and args.eager_reps > 0:
            row["eager_us"] = eager_us(contenders["auto"], xs, RM, args.eager_reps)
        del xs
        if args.read_max_m >= M:
            # The practical floor of a memory-bound call this size: a plain torch
            # reduction streaming the same bytes (R distinct buffers), same timer.
            n = max(1, awq_bytes(M, K, N, G) // 4)
            bufs = [torch.rand(n, device=device) for _ in range(RM)] if device.type == "cuda" else []
            calls = [lambda b=b: torch.sum(b) for b in bufs] or [lambda: None]
            t = timer.time(calls, contextlib.nullcontext, 1.1 * row["floor_us"])
            if t.error:
                row["errors"]["read"] = t.error
            else:
                row["read_us"] = t.us
            del bufs, calls
        derive(row)
        rows.append(row)
        n_done += 1
        if device.type == "cuda" and M >= 256:
            torch.cuda.empty_cache()  # release the graphs' private pools (large outputs, dequantized weights)
    cleanup()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mine = [r for r in rows if r["shape"] == shape.label and r["group"] == G and r["dtype"] == dname]
    glance = " ".join(
        f"M={r['M']}:{r['auto_floor']:.2f}"
        for r in mine
        if r.get("auto_floor") is not None and r["M"] in (1, 16, 64, 256, 4096)
    )
    bad = [c for c in checks if not c["ok"] and c["shape"] == shape.label and c["group"] == G and c["dtype"] == dname]
    return (
        f"R={R} {n_done}/{len(ms)} M"
        + (f" | auto/floor {glance}" if glance else "")
        + (f" | CHECK FAILED: {', '.join(sorted({c['contender'] for c in bad}))}" if bad else "")
    )


def row_errors_last(rows: Sequence[dict[str, Any]], c: str) -> str:
    for r in reversed(rows):
        if c in r["errors"]:
            return r["errors"][c]
    return "?"
