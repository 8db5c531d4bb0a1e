"""Summarizes an ncu source-page CSV (``ncu -i R --page source --csv --print-source sass``): the SASS
instructions with the most warp-stall samples, their share, and the stall columns ncu reports per line.

python3 ci/ncu_top_sass.py ncu-src-NAME-sass.log [--top 40]
"""

from __future__ import annotations

import argparse
import csv
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv_path")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    with open(a.csv_path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]  # ncu prefixes the table with its own log lines
    rows = list(csv.reader(lines))
    # ncu 2025+ puts a "Kernel Name" row above the table's header.
    while rows and rows[0] and rows[0][0] == "Kernel Name":
        print(f"kernel: {rows[0][1] if len(rows[0]) > 1 else '?'}")
        rows = rows[1:]
    if len(rows) < 2:
        sys.exit(f"{a.csv_path}: no CSV table found")
    head, body = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(head)}
    total_key = next((h for h in head if h.startswith("Warp Stall Sampling (All")), None)
    src_key = next((h for h in head if h in ("Source", "# Source")), None)
    if total_key is None or src_key is None:
        sys.exit(f"{a.csv_path}: columns not found; header: {head}")
    stall_cols = [h for h in head if h.lower().startswith("stall") or "stalled" in h.lower()]

    def num(v: str) -> float:
        try:
            return float(v.replace(",", ""))
        except ValueError:
            return 0.0

    total = sum(num(r[col[total_key]]) for r in body) or 1.0
    print(f"{len(body)} SASS lines, {total:.0f} stall samples ({total_key})")
    ranked = sorted(body, key=lambda r: -num(r[col[total_key]]))
    for r in ranked[: a.top]:
        s = num(r[col[total_key]])
        extra = " ".join(f"{h}={r[col[h]]}" for h in stall_cols if num(r[col[h]]) > 0.1 * s)
        addr = r[col["Address"]] if "Address" in col else ""
        print(f"{100 * s / total:5.1f}%  {addr:>6}  {r[col[src_key]][:90]:<90} {extra}")


if __name__ == "__main__":
    main()
