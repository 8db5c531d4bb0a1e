#!/usr/bin/env python3
"""awqgemm GEMM benchmark: time / floor, speedup over dense cuBLAS and over TurboMind.

What it measures (docs/perf-notes.md has the full method):

* Contenders, all timed the same way: ``auto`` (``awqgemm.gemm``, what users
  get), ``fused`` and ``dpath`` (awqgemm forced onto its fused tensor-core
  kernel / its dequantize + cuBLAS path, to tune the dispatch threshold),
  ``cublas`` (``x @ w`` with a dense ``[K, N]`` weight in the same dtype) and
  ``tm`` (PyPI ``turbomind==0.0.2``, fp16 + group 128 only, when importable).
* Timing: each contender is captured as one CUDA graph of R calls over R
  distinct weight copies and rotating activations, R chosen so one replay
  touches > 256 MiB (weights, x, out; the H100 L2 is 50 MB), so weights come
  from HBM, not L2; warm-up replays, then >= 20 timed replays, each preceded
  by a GPU spin so host launch cost is not timed; time = median replay / R.
* Floor = max(bytes / HBM read bandwidth, 2 M N K / dense matmul rate), both
  ceilings measured at the start of the same run (a reduction kernel over
  2 GiB; an 8192^3 matmul in each dtype).

Usage (on the GPU machine, after building awqgemm)::

    python3 benchmarks/gemm.py                 # full sweep (~4-5 min on an H100)
    python3 benchmarks/gemm.py --quick         # subset (~1-1.5 min)
    python3 benchmarks/gemm.py --plan          # what would run (no GPU needed)
    python3 benchmarks/gemm.py --shapes llama3-8b --m 1,16,64 --dtypes fp16 --groups 128
    python3 benchmarks/gemm.py --dry-run       # CPU: whole pipeline, tiny shapes, fake timings

Outputs ``benchmarks/results/<gpu>-<date>[-quick].{json,txt}`` and three PNGs
(``-floor``, ``-speedup``, ``-model``); ``--out DIR`` copies those five files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# ----------------------------------------------------------------------------- shapes

# [K, N] at TP1 in the order qkv, o_proj, gate_up, down (vLLM's kernel-benchmark shape sets).
MODELS: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "title": "Llama-3-8B",
        "layers": 32,
        "shapes": [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)],
    },
    "qwen2.5-7b": {
        "title": "Qwen2.5-7B",
        "layers": 28,
        "shapes": [(3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)],
    },
    "qwen2.5-32b": {
        "title": "Qwen2.5-32B",
        "layers": 64,
        "shapes": [(5120, 7168), (5120, 5120), (5120, 55296), (27648, 5120)],
    },
    "llama2-70b": {
        "title": "Llama-2-70B",
        "layers": 80,
        "shapes": [(8192, 10240), (8192, 8192), (8192, 57344), (28672, 8192)],
    },
}
LAYERS = ("qkv", "o", "gate_up", "down")
ROW_PARALLEL = ("o", "down")  # TP splits K; qkv and gate_up are column-parallel (TP splits N)
TPS = (1, 2)

M_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
M_QUICK = (1, 4, 8, 16, 64, 256, 1024, 4096)
M_DRY = (1, 2, 8, 16, 64, 256, 1024)  # --dry-run default: CPU matmuls at M = 8192 would take minutes
GROUP_MAIN = 128
GROUP_EXTRA = (64, 32)
GROUP_SHAPE = "llama3-8b/down/tp1"  # the one shape also run at groups 64 and 32

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CONTENDERS = ("auto", "fused", "wg", "dpath", "cublas", "tm", "machete", "marlin")
CONTENDER_DOC = {
    "auto": "awqgemm.gemm, default dispatch (what users get)",
    "fused": "awqgemm forced onto its sm80 fused kernels (testing.force(family='sm80', path='fused'))",
    "wg": "awqgemm forced onto the sm90a wgmma kernel (testing.force(family='sm90', path='fused'))",
    "dpath": "awqgemm forced onto dequantize + cuBLAS (testing.force(path='dense'))",
    "cublas": "dense torch matmul x @ w, w [K, N] in the same dtype (cuBLAS)",
    "tm": "turbomind==0.0.2 Linear(K, N, quant_method='awq'), fp16 + g128 only",
    "machete": "vLLM's Machete (CUTLASS wgmma, sm90), as awq_marlin runs it on Hopper (benchmarks/vllm_peers.py)",
    "marlin": "vLLM's Marlin (marlin_gemm on gptq_marlin_repack'ed weights, vLLM 0.26's AWQ path; vllm_peers.py)",
}

MODEL_LEVEL_MODELS = ("llama3-8b", "qwen2.5-32b")
MODEL_LEVEL_BATCHES = (1, 8, 64, 256)

# Targets (issue 3), checked at the end.
TARGET_FLOOR_MAX_M = 16
TARGET_FLOOR_RATIO = 1.15
TARGET_FLOOR_STRETCH = 1.10
TARGET_SPEEDUP = ((64, 2.5), (256, 1.2))
TARGET_LARGE_M = 1024
TARGET_LARGE_RATIO = 0.95

# Correctness thresholds (relative Frobenius error vs an fp32 product with the dequantized weight).
CHECK_M = (7, 300)
CHECK_TOL = {"fp16": 5e-3, "bf16": 2e-2}

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Shape:
    model: str
    layer: str
    tp: int
    K: int
    N: int

    @property
    def label(self) -> str:
        return f"{self.model}/{self.layer}/tp{self.tp}"


def all_shapes(shrink: bool = False) -> list[Shape]:
    """Every (model, layer, TP) shape; ``shrink`` gives tiny stand-ins with the same labels (dry run)."""
    out = []
    for tp in TPS:
        for model, spec in MODELS.items():
            for layer, (k, n) in zip(LAYERS, spec["shapes"], strict=True):
                if layer in ROW_PARALLEL:
                    k //= tp
                else:
                    n //= tp
                if shrink:
                    k = _round_up(max(k // 32, 1), 128)
                    n = _round_up(max(n // 32, 1), 16)
                out.append(Shape(model, layer, tp, k, n))
    return out


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


# ----------------------------------------------------------------------------- floors


def awq_bytes(M: int, K: int, N: int, G: int) -> int:
    """Fewest bytes a W4A16 GEMM moves: int4 weights, fp16 scales, 4-bit zeros, x in, out."""
    return K * N // 2 + (K // G) * N * 2 + (K // G) * N // 2 + M * K * 2 + M * N * 2


def dense_bytes(M: int, K: int, N: int) -> int:
    return K * N * 2 + M * K * 2 + M * N * 2


def floor_us(nbytes: int, flops: float, bw: float, rate: float) -> tuple[float, str]:
    t_mem, t_mma = nbytes / bw * 1e6, flops / rate * 1e6
    return (t_mem, "hbm") if t_mem >= t_mma else (t_mma, "mma")


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    us: float | None = None  # median replay / calls per replay
    min_us: float | None = None
    iqr_pct: float | None = None  # (p75 - p25) / median of the replays, in %
    calls: int = 0
    replays: int = 0
    error: str | None = None


def _short_error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return msg[0][:300] if msg else type(exc).__name__


class GraphTimer:
    """Times a list of calls as one CUDA graph replay (host overhead excluded)."""

    def __init__(self, replays: int, warmup: int, sleep_cycles: int = 200_000) -> None:
        self.replays = replays
        self.warmup = warmup
        self.sleep_cycles = sleep_cycles if hasattr(torch.cuda, "_sleep") else 0
        self.stream = torch.cuda.Stream()

    def time(
        self,
        calls: Sequence[Callable[[], Any]],
        ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        hint_us: float = 0.0,
    ) -> Timing:
        graph = torch.cuda.CUDAGraph()
        try:
            with ctx():
                # Eager warm-up on the capture stream: module load, cuBLAS handles, workspaces
                # that a library allocates on first use per stream (TurboMind does).
                self.stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.stream):
                    calls[0]()
                    if len(calls) > 1:
                        calls[-1]()
                self.stream.synchronize()
                with torch.cuda.stream(self.stream):
                    graph.capture_begin()
                    try:
                        for c in calls:
                            c()
                    finally:
                        graph.capture_end()
            torch.cuda.synchronize()
            for _ in range(self.warmup):
                graph.replay()
            torch.cuda.synchronize()
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.replays)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.replays)]
            for s, e in zip(starts, ends, strict=True):
                if self.sleep_cycles:
                    torch.cuda._sleep(self.sleep_cycles)  # the host queues the replay while the GPU spins
                s.record()
                graph.replay()
                e.record()
            torch.cuda.synchronize()
            ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))
        except Exception as exc:  # recorded, the sweep goes on
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
            return Timing(calls=len(calls), error=_short_error(exc))
        finally:
            with contextlib.suppress(Exception):
                graph.reset()
            del graph
        n = len(calls)
        med = statistics.median(ms)
        q = statistics.quantiles(ms, n=4) if len(ms) >= 4 else [med, med, med]
        return Timing(
            us=med * 1e3 / n, min_us=ms[0] * 1e3 / n, iqr_pct=100.0 * (q[2] - q[0]) / med, calls=n, replays=len(ms)
        )


class FakeTimer:
    """Dry run: runs each call eagerly (so the contender code is exercised) and invents a time."""

    def __init__(self, replays: int, seed: int = 0) -> None:
        self.replays = replays
        self.rng = random.Random(seed)

    def time(
        self,
        calls: Sequence[Callable[[], Any]],
        ctx: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        hint_us: float = 0.0,
    ) -> Timing:
        try:
            with ctx():
                for c in calls[:2]:
                    c()
        except Exception as exc:
            return Timing(calls=len(calls), error=_short_error(exc))
        us = hint_us * self.rng.uniform(0.97, 1.03)
        return Timing(us=us, min_us=us * 0.99, iqr_pct=1.0, calls=len(calls), replays=self.replays)


# ----------------------------------------------------------------------------- ceilings


def _rate(t: Timing, amount: float) -> float | None:
    return amount / (t.us * 1e-6) if t.us else None


def _read_bandwidths(timer: GraphTimer | FakeTimer, device: torch.device) -> dict[str, float | None]:
    """Read-only reductions over a 2 GiB fp32 tensor (reads 2 GiB, writes 4 bytes)."""
    buf = torch.empty(1 << 29, dtype=torch.float32, device=device).uniform_(-1, 1)
    nbytes = buf.numel() * 4
    return {
        "sum_fp32": _rate(timer.time([lambda: torch.sum(buf)]), nbytes),
        "amax_fp32": _rate(timer.time([lambda: torch.amax(buf)]), nbytes),
    }


def _rw_bandwidths(timer: GraphTimer | FakeTimer, device: torch.device) -> dict[str, float | None]:
    """1 GiB in, 1 GiB out: an elementwise kernel, and copy_ (a copy-engine memcpy node inside a graph)."""
    src = torch.empty(1 << 29, dtype=torch.float16, device=device).uniform_(-1, 1)
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * 2
    return {
        "elementwise": _rate(timer.time([lambda: torch.mul(src, 1.0001, out=dst)]), nbytes),
        "copy_graph": _rate(timer.time([lambda: dst.copy_(src)]), nbytes),
    }


def _mma_rate(timer: GraphTimer | FakeTimer, device: torch.device, dtype: torch.dtype, size: int = 8192) -> float:
    gen = torch.Generator(device=device).manual_seed(1)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    return _rate(timer.time([lambda: a @ b]), 2.0 * size**3) or float("nan")


def measure_ceilings(timer: GraphTimer | FakeTimer, dry: bool, device: torch.device) -> dict[str, Any]:
    """HBM read bandwidth (best reduction kernel over 2 GiB) and the dense matmul rate per dtype (8192^3)."""
    if dry:
        return {
            "hbm_read_Bps": 3.0e12,
            "hbm_read_kernels": {"fake": 3.0e12},
            "hbm_rw_Bps": 2.9e12,
            "copy_graph_Bps": 2.4e12,
            "mma_flops": {"fp16": 7.5e14, "bf16": 7.5e14},
            "note": "dry run: invented ceilings",
        }
    reads = {k: v for k, v in _read_bandwidths(timer, device).items() if v}
    torch.cuda.empty_cache()
    rw = _rw_bandwidths(timer, device)
    torch.cuda.empty_cache()
    rates = {dname: _mma_rate(timer, device, dt) for dname, dt in DTYPES.items()}
    torch.cuda.empty_cache()
    return {
        "hbm_read_Bps": max(reads.values()) if reads else float("nan"),
        "hbm_read_kernels": reads,
        "hbm_rw_Bps": rw["elementwise"],
        "copy_graph_Bps": rw["copy_graph"],
        "mma_flops": rates,
    }


def measure_read_bw(timer: GraphTimer | FakeTimer, dry: bool, device: torch.device) -> float | None:
    """The HBM read ceiling again (end of run), to see whether the card drifted."""
    if dry:
        return 3.0e12
    bw = _read_bandwidths(timer, device)
    torch.cuda.empty_cache()
    vals = [v for v in bw.values() if v]
    return max(vals) if vals else None


# ----------------------------------------------------------------------------- contenders


@dataclasses.dataclass
class Contender:
    name: str
    fn: Callable[[torch.Tensor, int], torch.Tensor]  # (x, weight copy) -> out
    ctx: Callable[[], contextlib.AbstractContextManager]


@dataclasses.dataclass
class TurboMindStatus:
    available: bool
    reason: str = ""
    version: str | None = None
    module: Any = None


def probe_turbomind(dry: bool) -> TurboMindStatus:
    if dry:
        return TurboMindStatus(False, "dry run (no GPU)")
    try:
        import turbomind  # type: ignore[import-not-found]
        import turbomind.linear as tml  # type: ignore[import-not-found]
    except Exception as exc:
        return TurboMindStatus(False, f"import turbomind failed: {_short_error(exc)}")
    version = getattr(turbomind, "__version__", None)
    if version is None:
        with contextlib.suppress(Exception):
            from importlib.metadata import version as _v

            version = _v("turbomind")
    ok = getattr(tml, "TURBOMIND_EXTENSION_INSTALLED", getattr(tml, "TURBOMIND_KERNELS_INSTALLED", True))
    if not ok:
        try:
            import _turbomind_ext  # type: ignore[import-not-found]  # noqa: F401

            reason = "turbomind reports its extension missing"
        except Exception as exc:
            reason = f"_turbomind_ext failed to load: {_short_error(exc)} (is libcudart.so.12 on LD_LIBRARY_PATH?)"
        return TurboMindStatus(False, reason, version)
    if not hasattr(turbomind, "Linear"):
        return TurboMindStatus(False, "turbomind has no Linear", version)
    return TurboMindStatus(True, "", version, turbomind)


def build_contenders(
    shape: Shape,
    G: int,
    dname: str,
    R: int,
    device: torch.device,
    wanted: Sequence[str],
    tm: TurboMindStatus,
    seed: int,
) -> tuple[dict[str, Contender], dict[str, str], torch.Tensor, Callable[[], None]]:
    """The contenders for one (shape, group, dtype), each holding R weight copies.

    Returns (contenders, unavailable reasons, the dense reference weight [K, N], cleanup).
    """
    import awqgemm

    dtype = DTYPES[dname]
    K, N = shape.K, shape.N
    qw, qz, s = awqgemm.testing.random_awq(K, N, G, dtype, device, seed)
    base = awqgemm.pack_awq(qw, qz, s, G)
    w_dense = awqgemm.dequantize_awq(qw, qz, s, G)  # [K, N] in dtype: the same function the AWQ kernels compute
    contenders: dict[str, Contender] = {}
    unavailable: dict[str, str] = {}
    keep: list[Any] = []

    awq_names = [c for c in ("auto", "fused", "wg", "dpath") if c in wanted]
    cuda = device.type == "cuda"
    if "wg" in awq_names and "sm90a_m64nNk16" not in awqgemm.build_info()["kernel_families"]:
        awq_names.remove("wg")
        unavailable["wg"] = "n/a: this awqgemm build has no sm90a family (CUDA_ARCHITECTURES without 90a-real)"
    elif "wg" in awq_names and (not cuda or torch.cuda.get_device_capability(device) != (9, 0)):
        awq_names.remove("wg")
        unavailable["wg"] = "n/a: the wgmma family runs on compute capability 9.0 only"
    if awq_names:
        packs = [base] + [
            dataclasses.replace(base, qweight=base.qweight.clone(), scales=base.scales.clone()) for _ in range(R - 1)
        ]
        keep.append(packs)
        sm80 = cuda and torch.cuda.get_device_capability(device) >= (8, 0)
        force = {
            "auto": {},
            "fused": {"family": "sm80", "path": "fused"} if sm80 else {"path": "fused"},
            "wg": {"family": "sm90", "path": "fused"},
            "dpath": {"path": "dense"},
        }
        for c in awq_names:
            contenders[c] = Contender(
                c,
                lambda x, i, packs=packs: awqgemm.gemm(x, packs[i]),
                lambda f=force[c]: awqgemm.testing.force(**f),
            )
    if "cublas" in wanted:
        ws = [w_dense] + [w_dense.clone() for _ in range(R - 1)]
        keep.append(ws)
        contenders["cublas"] = Contender("cublas", lambda x, i, ws=ws: torch.matmul(x, ws[i]), contextlib.nullcontext)
    if "tm" in wanted:
        if not tm.available:
            unavailable["tm"] = tm.reason
        elif dname != "fp16" or G != 128:
            unavailable["tm"] = "n/a: turbomind 0.0.2 runs fp16 + group 128 only"
        else:
            try:
                lins = []
                for _ in range(R):
                    lin = tm.module.Linear(K, N, bias=False, quant_method="awq", w_bit=4, group_size=128)
                    lin.qweight = qw.clone()
                    lin.qzeros = qz.clone()
                    lin.scales = s.clone()
                    lin.post_init()
                    lins.append(lin)
                keep.append(lins)
                contenders["tm"] = Contender("tm", lambda x, i, lins=lins: lins[i](x), contextlib.nullcontext)
            except Exception as exc:
                unavailable["tm"] = f"setup failed: {_short_error(exc)}"
    peers = [c for c in ("machete", "marlin") if c in wanted]
    if peers:
        try:
            import vllm_peers

            ok, reason, _ = vllm_peers.probe()
        except ImportError as exc:
            ok, reason = False, f"benchmarks/vllm_peers.py unavailable: {_short_error(exc)}"
        for c in peers:
            if not ok:
                unavailable[c] = reason
                continue
            build = vllm_peers.build_machete if c == "machete" else vllm_peers.build_marlin
            try:
                fns = [build(qw.clone(), qz.clone(), s.clone(), G, dtype) for _ in range(R)]
            except Exception as exc:
                unavailable[c] = f"setup failed: {_short_error(exc)}"
                continue
            keep.append(fns)
            contenders[c] = Contender(c, lambda x, i, fns=fns: fns[i](x), contextlib.nullcontext)
    del qw, qz, s

    def cleanup() -> None:
        keep.clear()
        contenders.clear()

    return contenders, unavailable, w_dense, cleanup


# ----------------------------------------------------------------------------- sweep


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


def copies_for(shape: Shape, G: int, M: int, rotate_bytes: int, max_copies: int) -> int:
    """Calls per graph R: enough distinct weight copies (and x, out) that one replay touches > rotate_bytes,
    so each call's weight was last read > L2 ago. At large M x and out alone flush L2 and R drops to 1,
    which keeps compute-bound points from costing R times their run time."""
    per = awq_bytes(M, shape.K, shape.N, G)
    return max(1, min(max_copies, math.ceil(rotate_bytes / per)))


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
                "fused": awq * (3 if M >= 1024 else 1),
                "wg": awq * 1.3,
                "dpath": dense + K * N * 2.5 / bw,
                "cublas": dense,
                "tm": awq * 2,
                "machete": awq * 1.3,
                "marlin": awq * 1.5,
            }
            for c in args.contenders:
                if c == "tm" and (b.dname != "fp16" or G != 128):
                    continue
                if c == "fused" and 0 < args.fused_max_m < M:
                    continue
                calls += R
                graphs += 1
                gpu += (args.replays + args.warmup) * (1.3 * per[c] * R + sleep_s) + 2 * 1.3 * per[c]
    return {"calls": calls, "graphs": graphs, "gpu_s": gpu}


def fake_hint(c: str, M: int, K: int, N: int, G: int, ceil: dict[str, Any], dname: str) -> float:
    """Dry run only: a made-up time for contender c (never reported as a measurement)."""
    bw, rate = ceil["hbm_read_Bps"], ceil["mma_flops"][dname]
    fl = 2.0 * M * N * K
    awq = max(awq_bytes(M, K, N, G) / bw, fl / rate) * 1e6
    dense = max(dense_bytes(M, K, N) / bw, fl / rate) * 1e6
    fused = awq * (1.08 + M / 256)
    dpath = dense * 1.15 + 0.3 * K * N * 2.5 / bw * 1e6
    return {
        "auto": min(fused, dpath),
        "fused": fused,
        "wg": awq * 1.2,
        "dpath": dpath,
        "cublas": dense * 1.1,
        "tm": awq * 2.0,
        "machete": awq * 1.25,
        "marlin": awq * 1.4,
    }[c]


def auto_path(M: int, K: int, N: int, dname: str, device: torch.device) -> str | None:
    """Which path awqgemm's dispatcher takes at M (for the repeat-noise estimate); None if unknown."""
    try:
        import awqgemm
        from awqgemm import _ops

        if device.type != "cuda" or not awqgemm.have_cuda_kernels():
            return None
        _, family, _, dense, _ = _ops._C.plan(0, 0, _ops._DTYPE_CODE[DTYPES[dname]], M, N, K, device.index or 0)
        return "dpath" if dense else ("wg" if family == 90 else "fused")
    except Exception:
        return None


def eager_us(con: Contender, xs: torch.Tensor, copies: int, reps: int) -> float:
    """Per-call time of eager calls back to back (no graph): what a layer pays when vLLM runs a batch
    above its largest captured graph. Where it exceeds the graph time, the host path (Python, the
    op dispatch, _C.plan, allocations) is the bound. Median of 5 runs of `reps` calls."""
    nx = xs.shape[0]
    times = []
    with con.ctx():
        for i in range(3):
            con.fn(xs[i % nx], i % copies)
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for i in range(reps):
                con.fn(xs[i % nx], i % copies)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(times)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    d = (out.float() - ref).norm().item()
    r = ref.norm().item()
    return d / r if r > 0 else float("inf")


def new_row(
    shape: Shape, G: int, dname: str, M: int, R: int, ceil: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """One (shape, group, dtype, M) point with its floor; timings are filled in by run_block."""
    K, N = shape.K, shape.N
    flops = 2.0 * M * N * K
    nbytes = awq_bytes(M, K, N, G)
    bw, rate = ceil["hbm_read_Bps"], ceil["mma_flops"][dname]
    fl, bound = floor_us(nbytes, flops, bw, rate)
    dfl, _ = floor_us(dense_bytes(M, K, N), flops, bw, rate)
    return {
        "shape": shape.label, "model": shape.model, "layer": shape.layer, "tp": shape.tp, "K": K, "N": N,
        "group": G, "dtype": dname, "M": M, "copies": R, "bytes": nbytes, "flops": flops,
        "floor_us": fl, "floor_bound": bound, "dense_floor_us": dfl, "auto_path": auto_path(M, K, N, dname, device),
        "us": {}, "min_us": {}, "iqr_pct": {}, "errors": {},
    }  # fmt: skip


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
                chk["error"] = _short_error(exc)
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
            if c == "fused" and 0 < args.fused_max_m < M:
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


def derive(row: dict[str, Any]) -> None:
    us = row["us"]
    a = us.get("auto")
    row["auto_floor"] = a / row["floor_us"] if a else None
    row["auto_read"] = a / row["read_us"] if a and row.get("read_us") else None
    row["speedup_dense"] = us["cublas"] / a if a and us.get("cublas") else None
    row["speedup_tm"] = us["tm"] / a if a and us.get("tm") else None
    row["best_awq_us"] = min([us[c] for c in ("fused", "wg", "dpath") if us.get(c)], default=None)
    row["speedup_machete"] = us["machete"] / a if a and us.get("machete") else None


# ----------------------------------------------------------------------------- reporting


def fmt_us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def fmt_x(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols = [c for c in CONTENDERS if any(r["us"].get(c) for r in rows)] or ["auto"]
    hdr = (
        f"{'shape':<22} {'K':>6} {'N':>6} {'g':>4} {'dt':<4} {'M':>5} | "
        + " ".join(f"{c:>7}" for c in cols)
        + f" | {'eager':>7} {'floor':>7} {'b':<3} {'read':>7} | {'a/flr':>5} {'xdense':>6} {'xtm':>5} {'xmach':>5}"
    )
    out = [hdr, "-" * len(hdr)]
    prev = None
    for r in rows:
        key = (r["shape"], r["group"], r["dtype"])
        if prev is not None and key != prev:
            out.append("")
        prev = key
        us = r["us"]
        head = f"{r['shape']:<22} {r['K']:>6} {r['N']:>6} {r['group']:>4} {r['dtype']:<4} {r['M']:>5} | "
        if r.get("skipped"):
            out.append(f"{head}skipped ({r['skipped']})")
            continue
        out.append(
            head
            + " ".join(f"{fmt_us(us.get(c)):>7}" for c in cols)
            + f" | {fmt_us(r.get('eager_us')):>7} {fmt_us(r['floor_us']):>7} {r['floor_bound']:<3} "
            f"{fmt_us(r.get('read_us')):>7} | "
            f"{fmt_x(r.get('auto_floor')):>5} {fmt_x(r.get('speedup_dense')):>6} {fmt_x(r.get('speedup_tm')):>5} "
            f"{fmt_x(r.get('speedup_machete')):>5}"
        )
    return out


def errors_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        for c, e in r["errors"].items():
            seen.setdefault((c, e), []).append(f"{r['shape']} g{r['group']} {r['dtype']} M={r['M']}")
    out = []
    for (c, e), where in seen.items():
        out.append(f"  {c}: {e}  [{len(where)} points, e.g. {where[0]}]")
    return out


def geomean(vals: Sequence[float]) -> float | None:
    vals = [v for v in vals if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def dispatch_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """For tuning DENSE_MIN_M: fused vs dequantize+cuBLAS per M, and where auto loses to the best path."""
    out = []
    ms = sorted({r["M"] for r in rows if r["us"].get("fused") and r["us"].get("dpath")})
    if not ms:
        return out
    for dname in sorted({r["dtype"] for r in rows}):
        parts = []
        for M in ms:
            rr = [
                r["us"]["fused"] / r["us"]["dpath"]
                for r in rows
                if r["M"] == M and r["dtype"] == dname and r["us"].get("fused") and r["us"].get("dpath")
            ]
            wins = sum(1 for v in rr if v > 1.0)
            g = geomean(rr)
            if g is not None:
                parts.append(f"M={M}: {g:.2f} ({wins}/{len(rr)})")
        out.append(f"  {dname} fused/dpath geomean (dpath wins on n/shapes): " + ", ".join(parts))
    lose = []
    for r in rows:
        a, b = r["us"].get("auto"), r.get("best_awq_us")
        if a and b and a > 1.05 * b:
            lose.append((a / b, r))
    lose.sort(key=lambda t: -t[0])
    if lose:
        out.append(
            f"  auto is > 5% slower than the better forced path at {len(lose)} points; worst: "
            + "; ".join(f"{r['shape']} {r['dtype']} g{r['group']} M={r['M']} {v:.2f}x" for v, r in lose[:6])
        )
    else:
        out.append("  auto is within 5% of the better forced path everywhere measured")
    # Repeat noise: auto and the forced path it dispatches to run the same kernels, timed twice.
    diffs = [
        abs(r["us"]["auto"] - r["us"][r["auto_path"]]) / r["us"]["auto"]
        for r in rows
        if r.get("auto_path") and r["us"].get("auto") and r["us"].get(r["auto_path"])
    ]
    if diffs:
        diffs.sort()
        out.append(
            f"  repeat noise (auto vs the same forced path, {len(diffs)} pairs): median "
            f"{100 * statistics.median(diffs):.1f}%, p90 {100 * diffs[int(0.9 * (len(diffs) - 1))]:.1f}%"
        )
    return out


def model_level(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """GEMMs of one decode step (all 4 linear layers x layers, lm_head excluded) at TP1, g128."""
    out = []
    idx = {(r["shape"], r["dtype"], r["M"]): r for r in rows if r["group"] == GROUP_MAIN and not r.get("skipped")}
    for model in MODEL_LEVEL_MODELS:
        nl = MODELS[model]["layers"]
        for dname in DTYPES:
            for b in MODEL_LEVEL_BATCHES:
                rs = [idx.get((f"{model}/{layer}/tp1", dname, b)) for layer in LAYERS]
                if any(r is None for r in rs):
                    continue
                ent: dict[str, Any] = {
                    "model": model,
                    "title": MODELS[model]["title"],
                    "layers": nl,
                    "dtype": dname,
                    "batch": b,
                    "step_us": {},
                    "tokens_per_s": {},
                }
                for c in ("auto", "cublas", "tm", "floor"):
                    vals = [r["floor_us"] if c == "floor" else r["us"].get(c) for r in rs]
                    if all(v is not None for v in vals):
                        step = nl * sum(vals)
                        ent["step_us"][c] = step
                        ent["tokens_per_s"][c] = b / (step * 1e-6)
                a, d = ent["step_us"].get("auto"), ent["step_us"].get("cublas")
                ent["speedup_dense"] = d / a if a and d else None
                t = ent["step_us"].get("tm")
                ent["speedup_tm"] = t / a if a and t else None
                out.append(ent)
    return out


def read_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Geomeans by (dtype, M) of read / floor and auto / read, where the read reference ran."""
    out = []
    keys = sorted({(r["dtype"], r["M"]) for r in rows if r.get("read_us")}, key=lambda k: (k[0], k[1]))
    for dname, M in keys:
        rr = [r for r in rows if r["dtype"] == dname and r["M"] == M and r.get("read_us") and r["group"] == GROUP_MAIN]
        rf = geomean([r["read_us"] / r["floor_us"] for r in rr])
        ar = [r["auto_read"] for r in rr if r.get("auto_read")]
        if rf is None or not ar:
            continue
        out.append(
            f"  {dname} M={M:<3d} read/floor {rf:.2f} ({min(r['read_us'] / r['floor_us'] for r in rr):.2f}.."
            f"{max(r['read_us'] / r['floor_us'] for r in rr):.2f}); auto/read {geomean(ar):.2f} "
            f"({min(ar):.2f}..{max(ar):.2f}); auto <= 1.15 x read at {sum(1 for v in ar if v <= 1.15)}/{len(ar)}"
        )
    return out or ["  (not measured: --read-max-m 0)"]


def model_lines(ml: Sequence[dict[str, Any]]) -> list[str]:
    if not ml:
        return ["  (needs TP1 g128 rows of llama3-8b and qwen2.5-32b at M = 1, 8, 64, 256)"]
    out = [
        f"  {'model':<12} {'dt':<4} {'batch':>5} | {'auto ms':>8} {'dense ms':>8} {'tm ms':>8} {'floor ms':>8} | "
        f"{'auto tok/s':>10} {'dense tok/s':>11} {'tm tok/s':>9} {'floor tok/s':>11} | {'xdense':>6} {'xtm':>5}"
    ]
    for e in ml:
        st, tp = e["step_us"], e["tokens_per_s"]

        def ms_(c: str, st: dict[str, float] = st) -> str:
            return f"{st[c] / 1e3:.3f}" if c in st else "-"

        def tk(c: str, tp: dict[str, float] = tp) -> str:
            return f"{tp[c]:.0f}" if c in tp else "-"

        out.append(
            f"  {e['title']:<12} {e['dtype']:<4} {e['batch']:>5} | {ms_('auto'):>8} {ms_('cublas'):>8} "
            f"{ms_('tm'):>8} {ms_('floor'):>8} | {tk('auto'):>10} {tk('cublas'):>11} {tk('tm'):>9} "
            f"{tk('floor'):>11} | {fmt_x(e['speedup_dense']):>6} {fmt_x(e['speedup_tm']):>5}"
        )
    return out


def check_targets(rows: Sequence[dict[str, Any]], tm_available: bool) -> list[dict[str, Any]]:
    live = [r for r in rows if not r.get("skipped") and r["us"].get("auto")]
    res = []

    def add(
        name: str,
        pts: list[tuple[float, dict[str, Any]]],
        ok: Callable[[float], bool],
        worst_high: bool,
        note: str = "",
    ) -> None:
        if not pts:
            res.append({"target": name, "status": "not measured", "n": 0, "n_pass": 0, "worst": [], "note": note})
            return
        bad = [(v, r) for v, r in pts if not ok(v)]
        pts_sorted = sorted(pts, key=lambda t: -t[0] if worst_high else t[0])
        res.append(
            {
                "target": name,
                "status": "PASS" if not bad else "MISS",
                "n": len(pts),
                "n_pass": len(pts) - len(bad),
                "worst": [
                    {"value": v, "shape": r["shape"], "dtype": r["dtype"], "group": r["group"], "M": r["M"]}
                    for v, r in pts_sorted[:5]
                ],
                "note": note,
            }
        )

    pts = [(r["auto_floor"], r) for r in live if r["M"] <= TARGET_FLOOR_MAX_M and r.get("auto_floor")]
    stretch = sum(1 for v, _ in pts if v <= TARGET_FLOOR_STRETCH)
    add(
        f"M <= {TARGET_FLOOR_MAX_M}: auto time / floor <= {TARGET_FLOOR_RATIO}",
        pts,
        lambda v: v <= TARGET_FLOOR_RATIO,
        True,
        f"stretch <= {TARGET_FLOOR_STRETCH}: {stretch}/{len(pts)}",
    )
    for m, need in TARGET_SPEEDUP:
        pts = [(r["speedup_dense"], r) for r in live if r["M"] == m and r.get("speedup_dense")]
        add(f"M = {m}: >= {need}x faster than dense (same dtype)", pts, lambda v, need=need: v >= need, False)
    pts = [(r["speedup_dense"], r) for r in live if r["M"] >= TARGET_LARGE_M and r.get("speedup_dense")]
    add(
        f"M >= {TARGET_LARGE_M}: >= {TARGET_LARGE_RATIO}x dense cuBLAS throughput",
        pts,
        lambda v: v >= TARGET_LARGE_RATIO,
        False,
    )
    pts = [(r["speedup_tm"], r) for r in live if r.get("speedup_tm")]
    add(
        "faster than TurboMind 0.0.2 at every point measured",
        pts,
        lambda v: v > 1.0,
        False,
        "" if tm_available else "turbomind unavailable in this run",
    )
    return res


def target_lines(res: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for t in res:
        head = f"  [{t['status']:<12}] {t['target']}"
        if t["n"]:
            head += f": {t['n_pass']}/{t['n']} points pass"
        if t["note"]:
            head += f" ({t['note']})"
        out.append(head)
        if t["status"] == "MISS":
            out.append(
                "      worst: "
                + "; ".join(f"{w['shape']} {w['dtype']} g{w['group']} M={w['M']}: {w['value']:.2f}" for w in t["worst"])
            )
    return out


# ----------------------------------------------------------------------------- plots

PLOT_STYLE = {
    "auto": {"color": "C0", "lw": 2.0, "label": "awqgemm auto"},
    "fused": {"color": "C2", "lw": 1.0, "label": "awqgemm fused (sm80)"},
    "wg": {"color": "C6", "lw": 1.5, "label": "awqgemm wgmma (sm90a)"},
    "machete": {"color": "C7", "lw": 1.5, "label": "vLLM Machete"},
    "marlin": {"color": "C8", "lw": 1.0, "label": "vLLM Marlin"},
    "dpath": {"color": "C4", "lw": 1.0, "label": "awqgemm dequant+cuBLAS"},
    "cublas": {"color": "C1", "lw": 1.5, "label": "dense cuBLAS"},
    "tm": {"color": "C3", "lw": 1.5, "label": "TurboMind 0.0.2"},
}


def _panels(rows: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for r in rows:
        k = (r["shape"], r["group"])
        if k not in keys:
            keys.append(k)
    return keys


def _grid(n: int) -> tuple[int, int]:
    cols = min(6, max(1, n))
    return math.ceil(n / cols), cols


def make_plots(
    rows: Sequence[dict[str, Any]], ml: Sequence[dict[str, Any]], ceil: dict[str, Any], title: str, stem: Path
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    live = [r for r in rows if not r.get("skipped")]
    paths: list[Path] = []
    panels = _panels(live)
    if panels:
        for kind in ("floor", "speedup"):
            nr, nc = _grid(len(panels))
            fig_h = 2.6 * nr + 1.2  # + title and legend bands
            fig, axes = plt.subplots(nr, nc, figsize=(3.3 * nc, fig_h), squeeze=False)
            for ax in axes.flat[len(panels) :]:
                ax.set_visible(False)
            for ax, (label, g) in zip(axes.flat, panels, strict=False):
                pr = [r for r in live if r["shape"] == label and r["group"] == g]
                K, N = pr[0]["K"], pr[0]["N"]
                for dname, ls in (("fp16", "-"), ("bf16", "--")):
                    dr = sorted((r for r in pr if r["dtype"] == dname), key=lambda r: r["M"])
                    if not dr:
                        continue
                    for c, st in PLOT_STYLE.items():
                        if kind == "speedup" and c == "cublas":
                            continue
                        if dname == "bf16" and c not in ("auto", "cublas"):
                            continue  # keep panels readable: bf16 shows awqgemm auto (and dense) only
                        xs, ys = [], []
                        for r in dr:
                            v = r["us"].get(c)
                            if v is None:
                                continue
                            if kind == "floor":
                                y = v / r["floor_us"]
                            else:
                                d = r["us"].get("cublas")
                                if not d:
                                    continue
                                y = d / v
                            xs.append(r["M"])
                            ys.append(y)
                        if xs:
                            ax.plot(
                                xs,
                                ys,
                                ls,
                                marker=".",
                                ms=3,
                                color=st["color"],
                                lw=st["lw"],
                                label=f"{st['label']} {dname}",
                            )
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                if kind == "floor":
                    ax.axhline(1.0, color="k", lw=0.8)
                    ax.axhline(TARGET_FLOOR_RATIO, color="k", lw=0.6, ls=":")
                else:
                    ax.axhline(1.0, color="k", lw=0.8)
                    present = sorted({r["M"] for r in pr})
                    tx = [m for m, _ in TARGET_SPEEDUP if m in present]
                    ty = [v for m, v in TARGET_SPEEDUP if m in present]
                    tx += [m for m in present if m >= TARGET_LARGE_M]
                    ty += [TARGET_LARGE_RATIO for m in present if m >= TARGET_LARGE_M]
                    ax.plot(tx, ty, "kx", ms=5)
                ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                ax.set_title(f"{label} g{g}\nK={K} N={N}", fontsize=8)
                ax.tick_params(labelsize=6)
                ax.grid(True, which="both", lw=0.3, alpha=0.5)
            handles, labels = [], []
            for ax in axes.flat:
                for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                    if lab not in labels:
                        handles.append(h)
                        labels.append(lab)
            fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
            if kind == "floor":
                sup = (
                    f"time / W4 floor vs M  (floor = max(bytes / {ceil['hbm_read_Bps'] / 1e12:.2f} TB/s, "
                    f"2MNK / MMA rate); dotted: {TARGET_FLOOR_RATIO:.2f} target)"
                )
            else:
                sup = "speedup over dense cuBLAS (same dtype) vs M  (x: targets 2.5 @64, 1.2 @256, 0.95 @>=1024)"
            fig.suptitle(f"{title}\n{sup}", fontsize=10)
            fig.tight_layout(rect=(0, 0.45 / fig_h, 1, 1 - 0.7 / fig_h))
            p = stem.with_name(f"{stem.name}-{kind}.png")
            fig.savefig(p, dpi=100)
            plt.close(fig)
            paths.append(p)
    # Model-level figure.
    ents = [e for e in ml if e["dtype"] == "fp16"] or list(ml)
    if ents:
        models = [m for m in MODEL_LEVEL_MODELS if any(e["model"] == m for e in ents)]
        fig, axes = plt.subplots(1, len(models), figsize=(6.0 * len(models), 4.2), squeeze=False)
        for ax, m in zip(axes.flat, models, strict=False):
            me = [e for e in ents if e["model"] == m]
            cs = [c for c in ("auto", "cublas", "tm", "floor") if any(c in e["tokens_per_s"] for e in me)]
            width = 0.8 / max(1, len(cs))
            for j, c in enumerate(cs):
                xs = [i + (j - (len(cs) - 1) / 2) * width for i, e in enumerate(me) if c in e["tokens_per_s"]]
                ys = [e["tokens_per_s"][c] for e in me if c in e["tokens_per_s"]]
                color = PLOT_STYLE[c]["color"] if c in PLOT_STYLE else "0.6"
                lab = PLOT_STYLE[c]["label"] if c in PLOT_STYLE else "W4 floor (ceiling)"
                ax.bar(xs, ys, width=width, color=color, label=lab, alpha=0.5 if c == "floor" else 1.0)
            for i, e in enumerate(me):
                if e.get("speedup_dense"):
                    top = max(e["tokens_per_s"].values())
                    ax.text(i, top * 1.08, f"{e['speedup_dense']:.2f}x dense", ha="center", fontsize=7)
            ax.set_xticks(range(len(me)), [f"batch {e['batch']}" for e in me])
            ax.set_yscale("log")
            ax.set_ylabel("GEMM-bound tokens/s (batch / GEMM time per step)")
            spec = MODELS[m]
            ax.set_title(f"{spec['title']} ({spec['layers']} layers, TP1, {me[0]['dtype']}, g128)", fontsize=9)
            ax.grid(True, axis="y", which="both", lw=0.3, alpha=0.5)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"{title}\nGEMMs of one decode step (qkv, o, gate_up, down x layers; lm_head excluded)", fontsize=10
        )
        fig.tight_layout()
        p = stem.with_name(f"{stem.name}-model.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- main


def parse_list(s: str | None, conv: Callable[[str], Any]) -> list[Any] | None:
    if s is None:
        return None
    return [conv(t.strip()) for t in s.split(",") if t.strip()]


def select_shapes(shapes: Sequence[Shape], spec: list[str] | None) -> list[Shape]:
    """--shapes tokens: 'KxN', or '/'-joined parts each equal to one of a label's parts (model, layer, tpN),
    e.g. llama3-8b, gate_up, tp2, qwen2.5-32b/down, llama2-70b/o/tp1; a shape is kept if any token matches."""
    if not spec:
        return list(shapes)
    keep = []
    for s in shapes:
        parts = set(s.label.split("/"))
        for tok in spec:
            t = tok.lower()
            if t == f"{s.K}x{s.N}" or all(p in parts for p in t.split("/")):
                keep.append(s)
                break
    return keep


def gpu_meta(device: torch.device, dry: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    try:
        import awqgemm

        meta["awqgemm"] = awqgemm.build_info()
    except Exception as exc:
        meta["awqgemm"] = {"error": _short_error(exc)}
    if dry:
        meta.update({"gpu": "cpu-dryrun", "gpu_slug": "cpu-dryrun"})
        return meta
    p = torch.cuda.get_device_properties(device)
    meta.update(
        {
            "gpu": p.name,
            "capability": f"{p.major}.{p.minor}",
            "sm_count": p.multi_processor_count,
            "memory_bytes": p.total_memory,
            "l2_bytes": getattr(p, "L2_cache_size", None),
            "gpu_slug": re.sub(r"[^a-z0-9]+", "-", p.name.lower().replace("nvidia", "")).strip("-") or "gpu",
        }
    )
    with contextlib.suppress(Exception):
        q = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu",
                "--format=csv,noheader",
                "-i",
                str(device.index or 0),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        meta["nvidia_smi"] = q.stdout.strip()
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"subset: TP1 shapes, M in {','.join(map(str, M_QUICK))}, group 128 only (~1-2 min)",
    )
    ap.add_argument("--shapes", help="comma list: substrings of model/layer/tpN labels, or KxN (default: all 32)")
    ap.add_argument("--m", help="comma list of M (default: the full sweep)")
    ap.add_argument("--dtypes", help="comma list of fp16,bf16 (default: both)")
    ap.add_argument(
        "--groups",
        help=f"comma list of group sizes (default: {GROUP_MAIN} everywhere, "
        f"{'/'.join(map(str, GROUP_EXTRA))} on --group-shape)",
    )
    ap.add_argument(
        "--group-shape",
        default=GROUP_SHAPE,
        help=f"shape label that also runs the extra groups, or 'all' (default {GROUP_SHAPE})",
    )
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma list of {','.join(CONTENDERS)}")
    ap.add_argument("--replays", type=int, default=21, help="timed graph replays per point (>= 20)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed graph replays per point")
    ap.add_argument(
        "--eager-reps",
        type=int,
        default=50,
        help="eager (no graph) calls of auto per timing, for the per-call host cost; 0: skip",
    )
    ap.add_argument(
        "--read-max-m",
        type=int,
        default=64,
        help="time the practical-floor reference (torch.sum over the same bytes) up to this M (0: never)",
    )
    ap.add_argument(
        "--fused-max-m",
        type=int,
        default=2048,
        help="time the forced fused kernel only up to this M (0: every M); above it the dispatcher "
        "uses dequantize + cuBLAS and the fused kernel only costs run time",
    )
    ap.add_argument("--rotate-mib", type=int, default=256, help="AWQ weight bytes each graph rotates through")
    ap.add_argument("--max-copies", type=int, default=64, help="cap on weight copies per graph")
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=540.0,
        help="stop measuring after this many seconds; the rest is marked skipped and outputs are "
        "still written (default 540)",
    )
    ap.add_argument("--results-dir", help="default: benchmarks/results (a temp dir for --dry-run)")
    ap.add_argument("--out", help="also copy the output files (json, txt, pngs) here, e.g. $OUT")
    ap.add_argument("--tag", default="", help="extra suffix for the output file names")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, fake timings: tests the pipeline")
    ap.add_argument("--plan", action="store_true", help="print the plan (points, graph sizes) and exit")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    dry = args.dry_run
    if args.replays < 20 and not dry:
        ap.error("--replays must be >= 20 (the method takes the median of at least 20 replays)")
    args.contenders = parse_list(args.contenders, str) or list(CONTENDERS)
    for c in args.contenders:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}; choose from {','.join(CONTENDERS)}")

    if dry and args.max_copies == ap.get_default("max_copies"):
        args.max_copies = 4  # tiny stand-in shapes would otherwise all take the cap
    shapes = all_shapes(shrink=dry)
    if args.quick:
        shapes = [s for s in shapes if s.tp == 1]
    shapes = select_shapes(shapes, parse_list(args.shapes, str))
    ms = parse_list(args.m, int) or list(M_DRY if dry else M_QUICK if args.quick else M_FULL)
    dnames = parse_list(args.dtypes, str) or list(DTYPES)
    for d in dnames:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}; choose from fp16,bf16")
    default_groups = [GROUP_MAIN] if args.quick else [GROUP_MAIN, *GROUP_EXTRA]
    groups = parse_list(args.groups, int) or default_groups
    blocks = plan_blocks(shapes, dnames, groups, args.group_shape)
    if not blocks:
        ap.error(
            "nothing to measure: the filters leave no (shape, group, dtype); groups other than "
            f"{GROUP_MAIN} run only on --group-shape ({args.group_shape}; 'all' for every shape)"
        )

    n_points = len(blocks) * len(ms)
    est = plan_estimate(blocks, ms, args)
    print(
        f"plan: {len(blocks)} (shape, group, dtype) blocks x {len(ms)} M = {n_points} points; "
        f"contenders {','.join(args.contenders)}; {est['calls']} captured calls; modeled H100 GPU time "
        f"{est['gpu_s']:.0f} s (+ capture/setup, typically a few ms per graph: {est['graphs']} graphs)",
        flush=True,
    )
    if args.plan:
        for b in blocks:
            rs = [copies_for(b.shape, b.G, M, args.rotate_mib * MiB, args.max_copies) for M in ms]
            print(f"  {b.shape.label:<22} K={b.shape.K:<6} N={b.shape.N:<6} g{b.G:<4} {b.dname} R={rs}")
        return 0

    if not dry and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU visible to torch (torch.cuda.is_available() is False). This benchmark needs a "
            "GPU; use --dry-run to test the pipeline on CPU.",
            file=sys.stderr,
        )
        return 2
    import awqgemm

    if not dry and not awqgemm.have_cuda_kernels():
        print(
            "error: this awqgemm build has no CUDA kernels (built with AWQGEMM_CUDA=0 or without nvcc). "
            "Build it on the GPU machine: pip install --no-build-isolation --no-deps ./kernels",
            file=sys.stderr,
        )
        return 2

    device = torch.device("cpu") if dry else torch.device("cuda", torch.cuda.current_device())
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references stay fp32
    meta = gpu_meta(device, dry)
    date = datetime.date.today().isoformat()
    stem_name = f"{meta['gpu_slug']}-{date}" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
    if args.results_dir:
        res_dir = Path(args.results_dir)
    elif dry:
        res_dir = Path(tempfile.mkdtemp(prefix="awqgemm-dryrun-"))
    else:
        res_dir = Path(__file__).resolve().parent / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = res_dir / stem_name
    title = f"awqgemm W4A16 GEMM on {meta['gpu']}, {date}" + (" (DRY RUN: fake timings)" if dry else "")
    print(
        f"{title}\n  torch {meta['torch']} (CUDA {meta['torch_cuda']}), awqgemm "
        f"{meta['awqgemm'].get('version')}, {meta.get('nvidia_smi', '')}",
        flush=True,
    )

    timer: GraphTimer | FakeTimer = FakeTimer(args.replays) if dry else GraphTimer(args.replays, args.warmup)
    tm = probe_turbomind(dry) if "tm" in args.contenders else TurboMindStatus(False, "not requested")
    print(f"turbomind: {'available ' + str(tm.version) if tm.available else 'unavailable: ' + tm.reason}", flush=True)

    ceil = measure_ceilings(timer, dry, device)
    if not all(math.isfinite(v) for v in (ceil["hbm_read_Bps"], *ceil["mma_flops"].values())):
        print(f"error: could not measure the ceilings ({ceil}); no floor, no benchmark", file=sys.stderr)
        return 1
    print(
        f"ceilings: HBM read {ceil['hbm_read_Bps'] / 1e12:.3f} TB/s ("
        + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in ceil["hbm_read_kernels"].items())
        + f"); read+write {fmt_x((ceil['hbm_rw_Bps'] or 0) / 1e12, 3)} TB/s; graph copy_ "
        f"{fmt_x((ceil['copy_graph_Bps'] or 0) / 1e12, 3)} TB/s (not used); MMA "
        + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in ceil["mma_flops"].items()),
        flush=True,
    )

    deadline = t_start + args.deadline_s
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    fatal = None
    for i, blk in enumerate(blocks):
        t0 = time.monotonic()
        try:
            summary = run_block(blk, ms, args, timer, ceil, tm, device, deadline, rows, checks)
        except Exception as exc:
            summary = f"BLOCK FAILED: {_short_error(exc)}"
            traceback.print_exc()
            if device.type == "cuda":
                try:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                except Exception as exc2:  # the CUDA context is gone: stop, keep what we have
                    fatal = _short_error(exc2)
        print(
            f"[{i + 1}/{len(blocks)}] {blk.shape.label} {blk.shape.K}x{blk.shape.N} g{blk.G} {blk.dname}: "
            f"{summary} ({time.monotonic() - t0:.1f} s, total {time.monotonic() - t_start:.0f} s)",
            flush=True,
        )
        if fatal:
            print(f"fatal CUDA error, stopping the sweep: {fatal}", flush=True)
            break
    bw_end = None if fatal else measure_read_bw(timer, dry, device)

    ml = model_level(rows)
    targets = check_targets(rows, tm.available)
    elapsed = time.monotonic() - t_start
    bad_checks = [c for c in checks if not c["ok"]]

    lines: list[str] = [title, ""]
    lines.append(f"GPU {meta['gpu']} | torch {meta['torch']} CUDA {meta['torch_cuda']} | {meta.get('nvidia_smi', '')}")
    lines.append(
        f"ceilings: HBM read {ceil['hbm_read_Bps'] / 1e12:.3f} TB/s (start), "
        f"{fmt_x((bw_end or 0) / 1e12, 3)} TB/s (end); MMA "
        + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in ceil["mma_flops"].items())
    )
    lines.append(
        f"timing: CUDA graph of R calls over R weight copies (one replay touches >= {args.rotate_mib} MiB), "
        f"{args.warmup} warm-up + {args.replays} timed replays, median / R; times in us"
    )
    lines.append(f"turbomind: {'available ' + str(tm.version) if tm.available else 'unavailable: ' + tm.reason}")
    lines.append(
        "columns: a/flr = auto / floor; xdense = cublas / auto; xtm = tm / auto; xmach = machete / auto; "
        "eager = auto called eagerly back to back (host path included); b = floor bound; "
        "read = torch.sum over the same bytes (practical floor, M <= --read-max-m)"
    )
    lines.append("")
    lines += table_lines(rows)
    err = errors_lines(rows)
    if err:
        lines += ["", "errors / unavailable:", *err]
    lines += [
        "",
        f"correctness: {len(checks) - len(bad_checks)}/{len(checks)} checks within tolerance "
        f"(rel. Frobenius error vs fp32 x @ dequantized W; fp16 {CHECK_TOL['fp16']}, "
        f"bf16 {CHECK_TOL['bf16']})",
    ]
    for c in bad_checks[:20]:
        lines.append(
            f"  FAILED {c['contender']} {c['shape']} g{c['group']} {c['dtype']} M={c['M']}: "
            f"rel_err={c['rel_err']} {c.get('error', '')}"
        )
    worst = {}
    for c in checks:
        if c["rel_err"] is not None:
            key = (c["contender"], c["dtype"])
            worst[key] = max(worst.get(key, 0.0), c["rel_err"])
    if worst:
        lines.append("  worst rel err: " + ", ".join(f"{k[0]} {k[1]} {v:.1e}" for k, v in sorted(worst.items())))
    lines += ["", "dispatch (fused vs dequantize + cuBLAS):", *(dispatch_lines(rows) or ["  (needs fused and dpath)"])]
    lines += ["", "practical floor (read = torch.sum streaming the same bytes, same graph timer):", *read_lines(rows)]
    model_head = (
        "model level: GEMM time of one decode step and the GEMM-bound tokens/s ceiling (TP1, g128; no lm_head):"
    )
    lines += ["", model_head, *model_lines(ml)]
    n_skip = sum(1 for r in rows if r.get("skipped"))
    skipped = f", {n_skip} skipped at the deadline" if n_skip else ""
    lines += ["", f"targets (awqgemm auto; {len(rows) - n_skip} points measured{skipped}):", *target_lines(targets)]
    if bad_checks:
        lines.append(
            f"  [WARNING     ] {len(bad_checks)} correctness checks FAILED: timings of those contenders "
            "are not trustworthy"
        )
    if dry:
        lines.append("  (DRY RUN: every number above is invented; nothing was measured)")
    lines.append(f"elapsed {elapsed:.0f} s")

    text = "\n".join(lines) + "\n"
    print()
    print(text, end="", flush=True)

    result = {
        "meta": {
            **meta,
            "date": date,
            "argv": list(sys.argv if argv is None else argv),
            "dry_run": dry,
            "quick": args.quick,
            "elapsed_s": elapsed,
            "fatal": fatal,
            "turbomind": {"available": tm.available, "version": tm.version, "reason": tm.reason},
        },
        "method": {
            "timing": "CUDA graph of R calls over R distinct weight copies (and rotating x), R = "
            "min(max_copies, ceil(rotate_bytes / AWQ bytes of one call)), warm-up replays, median over timed "
            "replays / R; a GPU spin before each replay keeps host launch cost out",
            "rotate_bytes": args.rotate_mib * MiB,
            "max_copies": args.max_copies,
            "replays": args.replays,
            "warmup": args.warmup,
            "floor": "max(bytes / hbm_read_Bps, 2*M*N*K / mma_flops[dtype]); bytes = K*N/2 + (K/G)*N*2 + "
            "(K/G)*N/2 + M*K*2 + M*N*2",
            "contenders": {c: CONTENDER_DOC[c] for c in args.contenders},
            "check": f"rel. Frobenius error vs fp32 x @ dequantized W at M in {list(CHECK_M)}",
        },
        "ceilings": {**ceil, "hbm_read_Bps_end": bw_end},
        "rows": rows,
        "checks": checks,
        "model_level": ml,
        "targets": targets,
    }
    files = [stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".txt")]
    files[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    files[1].write_text(text)
    try:
        files += make_plots(rows, ml, ceil, title, stem)
    except Exception:  # the numbers are already saved
        print("plotting failed:", file=sys.stderr)
        traceback.print_exc()
    print("wrote: " + ", ".join(str(f) for f in files))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, out / f.name)
        print(f"copied {len(files)} files to {out}")
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
