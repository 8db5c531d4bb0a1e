"""Rows and their derived metrics, the text tables, the targets, and the JSON result."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .contenders import CONTENDER_DOC, CONTENDERS, TurboMindStatus, auto_path
from .shapes import DTYPES, GROUP_MAIN, LAYERS, MODELS, MiB, Shape, awq_bytes, dense_bytes, floor_us

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


def derive(row: dict[str, Any]) -> None:
    us = row["us"]
    a = us.get("auto")
    row["auto_floor"] = a / row["floor_us"] if a else None
    row["auto_read"] = a / row["read_us"] if a and row.get("read_us") else None
    row["speedup_dense"] = us["cublas"] / a if a and us.get("cublas") else None
    row["speedup_tm"] = us["tm"] / a if a and us.get("tm") else None
    awq_paths = ("autox", "a80", "fused", "wt", "wg", "dpath")
    row["best_awq_us"] = min([us[c] for c in awq_paths if us.get(c)], default=None)
    row["speedup_machete"] = us["machete"] / a if a and us.get("machete") else None
    a80 = us.get("a80")
    row["a80_vs_marlin"] = a80 / us["marlin"] if a80 and us.get("marlin") else None  # time ratio (issue 11)


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


def report_text(
    title: str,
    meta: dict[str, Any],
    ceil: dict[str, Any],
    bw_end: float | None,
    args: argparse.Namespace,
    tm: TurboMindStatus,
    rows: Sequence[dict[str, Any]],
    checks: Sequence[dict[str, Any]],
    ml: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    elapsed: float,
) -> str:
    """The run's text report: header, the table, errors, correctness, dispatch, floors, model level, targets."""
    dry = args.dry_run
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

    return "\n".join(lines) + "\n"


def result_json(
    meta: dict[str, Any],
    date: str,
    argv: list[str],
    args: argparse.Namespace,
    elapsed: float,
    fatal: str | None,
    tm: TurboMindStatus,
    ceil: dict[str, Any],
    bw_end: float | None,
    *,
    rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    ml: list[dict[str, Any]],
    targets: list[dict[str, Any]],
) -> dict[str, Any]:
    """The run's JSON result: meta, method, ceilings, rows, checks, model level and targets."""
    dry = args.dry_run
    return {
        "meta": {
            **meta,
            "date": date,
            "argv": argv,
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
