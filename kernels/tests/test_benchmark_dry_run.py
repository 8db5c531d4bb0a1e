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


MOE_PY = GEMM_PY.parent / "moe.py"


def test_moe_benchmark_dry_run(tmp_path):
    """benchmarks/moe.py --dry-run: every contender built and called on CPU (vLLM's Marlin MoE through
    a stand-in with vLLM 0.26.0's call signatures), outputs checked against the dense computation,
    fake timings, one JSON."""
    if not MOE_PY.exists():
        pytest.skip(f"benchmarks/moe.py is not next to these tests ({MOE_PY}): it runs from the source tree")
    cmd = [sys.executable, str(MOE_PY), "--dry-run", "--tokens", "1,3,16", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAKE timings" in r.stdout
    results = list(tmp_path.glob("*-dry.json"))
    assert len(results) == 1, sorted(p.name for p in tmp_path.iterdir())
    data = json.loads(results[0].read_text())
    assert data["dry_run"] is True and "FAKE" in data["timings"]
    rows = data["rows"]
    assert {(row["shape"], row["tokens"]) for row in rows} == {
        (s, t) for s in ("qwen3-30b-a3b", "mixtral-8x7b") for t in (1, 3, 16)
    }
    for row in rows:
        for key in ("awqgemm_graph_us", "awqgemm_eager_us", "dense_fp16_eager_us", "marlin_graph_us"):
            assert row[key] > 0, (key, row)
        assert "marlin_note" not in row, row
        # fp16 rounding of the activations and outputs only: ~1e-3
        for key in ("rel_err_vs_dense", "marlin_rel_err_vs_dense", "marlin_rel_err_vs_awqgemm"):
            assert row[key] < 5e-3, (key, row)


def test_moe_benchmark_rejects_bad_arguments():
    if not MOE_PY.exists():
        pytest.skip(f"benchmarks/moe.py is not next to these tests ({MOE_PY}): it runs from the source tree")
    for bad in (["--shapes", "llama"], ["--tokens", "0"], ["--tokens", "a,b"]):
        r = subprocess.run(
            [sys.executable, str(MOE_PY), "--dry-run", *bad], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and "error:" in r.stderr, (bad, r.stderr[-2000:])
