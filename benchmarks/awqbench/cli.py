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
import datetime
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .contenders import CONTENDERS, TurboMindStatus, probe_turbomind
from .plots import make_plots
from .report import check_targets, fmt_x, model_level, report_text, result_json
from .shapes import (
    DTYPES,
    GROUP_EXTRA,
    GROUP_MAIN,
    GROUP_SHAPE,
    M_DRY,
    M_FULL,
    M_QUICK,
    MiB,
    all_shapes,
    copies_for,
    select_shapes,
)
from .sweep import plan_blocks, plan_estimate, run_block
from .timing import FakeTimer, GraphTimer, measure_ceilings, measure_read_bw, short_error


def parse_list(s: str | None, conv: Callable[[str], Any]) -> list[Any] | None:
    if s is None:
        return None
    return [conv(t.strip()) for t in s.split(",") if t.strip()]


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
        meta["awqgemm"] = {"error": short_error(exc)}
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


def build_parser() -> argparse.ArgumentParser:
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
    ap.add_argument(
        "--skip-contenders",
        default="",
        help="comma list of contenders to leave out even where --contenders names them (ci/device_kernels.sh: "
        "those of a work-in-progress feature whose GPU tests failed in the same run)",
    )
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
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    dry = args.dry_run
    if args.replays < 20 and not dry:
        ap.error("--replays must be >= 20 (the method takes the median of at least 20 replays)")
    args.contenders = parse_list(args.contenders, str) or list(CONTENDERS)
    skipped = parse_list(args.skip_contenders, str)
    for c in [*args.contenders, *skipped]:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}; choose from {','.join(CONTENDERS)}")
    if skipped:
        args.contenders = [c for c in args.contenders if c not in skipped]
        print(f"skipping contenders {','.join(skipped)} (--skip-contenders)")
        if not args.contenders:
            ap.error("--skip-contenders leaves no contender to time")

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
        res_dir = Path(__file__).resolve().parents[1] / "results"  # benchmarks/results
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
            summary = f"BLOCK FAILED: {short_error(exc)}"
            traceback.print_exc()
            if device.type == "cuda":
                try:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                except Exception as exc2:  # the CUDA context is gone: stop, keep what we have
                    fatal = short_error(exc2)
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
    text = report_text(title, meta, ceil, bw_end, args, tm, rows, checks, ml, targets, elapsed)
    print()
    print(text, end="", flush=True)

    argv_list = list(sys.argv if argv is None else argv)
    result = result_json(
        meta, date, argv_list, args, elapsed, fatal, tm, ceil, bw_end, rows=rows, checks=checks, ml=ml, targets=targets
    )
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
