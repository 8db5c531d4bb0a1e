"""Ratios between contenders of a gemm.py result, per dtype and M.

    python benchmarks/compare.py benchmarks/results/h200-2026-11-29-switches2.json wgs/wg machete/auto
    python benchmarks/compare.py RESULT.json wg/auto --shapes llama3-8b --m 64 --points
    python benchmarks/compare.py RESULT.json 'auto/wg|dpath' --dtypes fp16     # a dispatch rule's choice
                                                                              # over the better of two paths

For each ratio ``a/b`` (contender names of the JSON's rows: time of a over time of b) it prints, per
(dtype, M), the geometric mean, the range and how many points a is faster at (ratio < 1), over the rows
that have both times; ``--points`` also lists every point. A side may name several contenders joined by
``|``: its time is the fastest of them (every one must be timed in the row). Reads the JSON only; no GPU,
no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def side_time(us: dict[str, float], side: str) -> float | None:
    """The time of one side of a ratio: a contender's, or the fastest of ``a|b|...`` (None unless all timed)."""
    times = [us.get(name) for name in side.split("|")]
    return min(times) if all(times) else None


def ratio_rows(rows: Sequence[dict[str, Any]], a: str, b: str) -> dict[tuple[str, int], list[tuple[str, float]]]:
    """(dtype, M) -> [(row label, time of a / time of b)] for the rows with both times."""
    out: dict[tuple[str, int], list[tuple[str, float]]] = defaultdict(list)
    for r in rows:
        us = r.get("us", {})
        ta, tb = side_time(us, a), side_time(us, b)
        if ta and tb:
            out[(r["dtype"], r["M"])].append((f"{r['shape']} g{r['group']}", ta / tb))
    return dict(out)


def summary_lines(rows: Sequence[dict[str, Any]], a: str, b: str, points: bool = False) -> list[str]:
    groups = ratio_rows(rows, a, b)
    if not groups:
        return [f"{a}/{b}: no row has both times"]
    lines = [f"{a}/{b}   (time ratio; < 1: {a} faster)", "  dtype      M   geomean   min    max   faster/points"]
    for (dtype, m), vals in sorted(groups.items()):
        rs = [v for _, v in vals]
        gm = math.exp(sum(math.log(v) for v in rs) / len(rs))
        lines.append(
            f"  {dtype:5s} {m:6d}   {gm:7.3f} {min(rs):6.2f} {max(rs):6.2f}   {sum(v < 1 for v in rs):3d}/{len(rs)}"
        )
        if points:
            lines += [f"      {label:34s} {v:6.3f}" for label, v in sorted(vals, key=lambda lv: lv[1])]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", type=Path, help="a gemm.py result JSON (benchmarks/results/*.json)")
    ap.add_argument("ratios", nargs="+", help="a/b: contender a's time over contender b's")
    ap.add_argument("--shapes", help="comma list of substrings of the row labels (model/layer/tpN) to keep")
    ap.add_argument("--m", help="comma list of M to keep")
    ap.add_argument("--dtypes", help="comma list of dtypes to keep (fp16, bf16)")
    ap.add_argument("--points", action="store_true", help="list every point under its (dtype, M) line")
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.result.read_text())
        rows = doc["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        ap.error(f"{args.result}: not a gemm.py result JSON ({exc})")
    if args.shapes:
        keys = [s for s in args.shapes.split(",") if s]
        rows = [r for r in rows if any(k in r["shape"] for k in keys)]
    if args.m:
        try:
            ms = {int(v) for v in args.m.split(",") if v}
        except ValueError:
            ap.error(f"--m: expected a comma list of integers, got {args.m!r}")
        rows = [r for r in rows if r["M"] in ms]
    if args.dtypes:
        rows = [r for r in rows if r["dtype"] in set(args.dtypes.split(","))]
    names = {c for r in rows for c in r.get("us", {})}
    for spec in args.ratios:
        a, sep, b = spec.partition("/")
        sides = [name for side in (a, b) for name in side.split("|")]
        if not sep or not all(sides):
            ap.error(f"ratio {spec!r}: expected a/b, two contender names (or a|b|... for the fastest of several)")
        missing = sorted(set(sides) - names)
        if missing:
            have = ", ".join(sorted(names))
            ap.error(f"ratio {spec!r}: no times for {', '.join(missing)} in the rows kept (have: {have})")
        print("\n".join(summary_lines(rows, a, b, args.points)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
