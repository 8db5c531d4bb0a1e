"""Timers (CUDA graph replays, the dry run's fake timer, eager calls) and the hardware ceilings."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .shapes import DTYPES, awq_bytes, dense_bytes

if TYPE_CHECKING:
    from .contenders import Contender


@dataclasses.dataclass
class Timing:
    us: float | None = None  # median replay / calls per replay
    min_us: float | None = None
    iqr_pct: float | None = None  # (p75 - p25) / median of the replays, in %
    calls: int = 0
    replays: int = 0
    error: str | None = None


def short_error(exc: BaseException) -> str:
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
            return Timing(calls=len(calls), error=short_error(exc))
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
            return Timing(calls=len(calls), error=short_error(exc))
        us = hint_us * self.rng.uniform(0.97, 1.03)
        return Timing(us=us, min_us=us * 0.99, iqr_pct=1.0, calls=len(calls), replays=self.replays)


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
        "a80": min(fused * 1.1, dpath),
        "fused": fused,
        "wt": awq * (1.05 + M / 512),
        "wg": awq * 1.2,
        "autox": min(fused, dpath) * 0.97,
        "dpath": dpath,
        "cublas": dense * 1.1,
        "tm": awq * 2.0,
        "machete": awq * 1.25,
        "marlin": awq * 1.4,
    }[c]


def eager_us(con: Contender, xs: torch.Tensor, copies: int, reps: int) -> float:
    """Per-call time of eager calls back to back (no graph): what a layer pays when vLLM runs a batch
    above its largest captured graph. Where it exceeds the graph time, the host path (Python, the
    op dispatch, the dispatcher's plan, allocations) is the bound. Median of 5 runs of `reps` calls."""
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
