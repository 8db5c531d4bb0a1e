"""The kernel benchmark's pipeline on the CPU (``benchmarks/gemm.py --dry-run``):
contenders built, correctness checks run, rows and the JSON written. The GPU
numbers come from device runs; this keeps the script itself from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GEMM_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "gemm.py"


def test_gemm_benchmark_dry_run(tmp_path):
    if not GEMM_PY.exists():
        # The conda package's stored tests copy kernels/tests only; the source tree's run covers this.
        pytest.skip(f"benchmarks/gemm.py is not next to these tests ({GEMM_PY}): it runs from the source tree")
    cmd = [sys.executable, str(GEMM_PY), "--dry-run", "--quick", "--shapes", "llama3-8b/o/tp1", "--m", "1,64"]
    r = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "BLOCK FAILED" not in r.stdout, r.stdout[-3000:]
    results = list(tmp_path.glob("*.json"))
    assert len(results) == 1, sorted(p.name for p in tmp_path.iterdir())
    data = json.loads(results[0].read_text())
    rows = [row for row in data["rows"] if not row.get("skipped")]
    assert {row["M"] for row in rows} == {1, 64}
    assert all(row["us"].get("auto") for row in rows), rows
    checks = data.get("checks", [])
    assert checks and all(c["ok"] for c in checks if c["contender"] in ("auto", "fused", "dpath")), checks
