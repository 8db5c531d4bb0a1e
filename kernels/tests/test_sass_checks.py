"""The SASS checks of the kernels' hot loops (ci/sass_ring_check.py), on the CPU: v11.1's ring loops keep
their slot and phase in uniform registers, and the K-split decode kernels stay within their instruction
budget per KB of weights (both measured to cost 5-60 % of kernel time when they slipped; the script's
docstring says how). They need nvcc and nvdisasm, not a GPU."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "ci" / "sass_ring_check.py"
if not SCRIPT.exists():
    # The conda package's stored tests copy kernels/tests only; the source tree's run covers this.
    pytest.skip(f"ci/sass_ring_check.py is not next to these tests ({SCRIPT})", allow_module_level=True)


@pytest.mark.slow
def test_hot_loops_sass():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if r.returncode == 2:
        pytest.skip(f"no nvcc or nvdisasm on this machine: {r.stdout.strip()}")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert sum(line.startswith("ok ") and "K-split" in line for line in lines) >= 24, r.stdout[-3000:]
    assert sum(line.startswith("ok ") and "k-loops R2UR" in line for line in lines) >= 12, r.stdout[-3000:]
