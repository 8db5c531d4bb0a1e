"""GPU integration: tiny AWQ checkpoints (real AWQ format) served by a real CUDA vLLM.

Llama g128 and Qwen2 g64 (q/k/v bias), and the mixture-of-experts Qwen3-MoE g64
(8 experts, top-2) and Mixtral g128 (4 experts, top-2), written by ``awq_tiny``, are
served through
``awqgemm`` (eager, and compiled with CUDA graphs), through the ``awq_turbomind``
alias, and through vLLM's own ``awq_marlin`` on the same GPU. Prompt logprobs are
compared with the transformers fp32 reference of the dequantized model and with
``awq_marlin``; the largest and mean |Δ| of each are printed as a table and written
as JSON (``$AWQGEMM_GPU_VLLM_OUT/gpu-vllm-logprobs.json``).

All engines run one after the other in ONE subprocess (vLLM imported once; each engine
start costs GPU time): ``engine_runner.run_one`` with GPU engine arguments added
(a low ``gpu_memory_utilization``, CUDA graph sizes for the compiled runs).
Runs on the GPU machine through ``bash ci/device_vllm.sh ... tests``; skips without a
CUDA GPU or a CUDA build of vLLM. Tensor parallel (TP=2) runs only where two GPUs are seen.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU (these run on the GPU machine: bash ci/device_vllm.sh ... install tests)"
    try:
        from vllm.platforms import current_platform
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"vLLM does not import: {exc!r}"
    if not current_platform.is_cuda():
        return f"vLLM is not a CUDA build (platform {type(current_platform).__name__})"
    return None


SKIP_REASON = _skip_reason() if __name__ != "__main__" else None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]

#: Tolerances on prompt-logprob |Δ| (natural log), fp16 engines.
#  vs the fp32 reference: awqgemm may be at most REL x awq_marlin's own error on the
#  same checkpoint and GPU (or the floor, whichever is larger), and never above the caps.
REL_VS_MARLIN = 2.0
FLOOR_MEAN, FLOOR_MAX = 0.03, 0.2
CAP_MEAN, CAP_MAX = 0.1, 1.0
#  awqgemm vs awq_marlin directly (both dequantize exactly; fp16 rounding differs).
TOL_VS_MARLIN_MEAN, TOL_VS_MARLIN_MAX = 0.05, 0.5
#  the alias must serve exactly what awqgemm serves (same method, same kernels).
TOL_ALIAS_MAX = 1e-3

MAX_TOKENS = 8
ENGINE_KWARGS = {"gpu_memory_utilization": 0.25}
COMPILED = {"compilation_config": {"cudagraph_capture_sizes": [1, 2, 4, 8]}}

#: name -> (checkpoint, quantization, enforce_eager, extra LLM kwargs)
RUNS: dict[str, tuple[str, str, bool, dict[str, Any]]] = {
    "qwen2_g64/awq_marlin": ("qwen2_g64", "awq_marlin", True, {}),
    "qwen2_g64/awqgemm eager": ("qwen2_g64", "awqgemm", True, {}),
    "qwen2_g64/awqgemm compiled+graphs": ("qwen2_g64", "awqgemm", False, COMPILED),
    "llama_g128/awq_marlin": ("llama_g128", "awq_marlin", True, {}),
    "llama_g128/awq_turbomind eager": ("llama_g128", "awq_turbomind", True, {}),
    "llama_g128/awqgemm eager": ("llama_g128", "awqgemm", True, {}),
    "llama_g128/awqgemm compiled+graphs": ("llama_g128", "awqgemm", False, COMPILED),
    # mixture-of-experts (issue 12): experts on AwqGemmMoEMethod / awqgemm.fused_moe,
    # vs vLLM's own AWQ MoE (Marlin MoE) on the same checkpoint
    "qwen3moe_g64/awq_marlin": ("qwen3moe_g64", "awq_marlin", True, {}),
    "qwen3moe_g64/awqgemm eager": ("qwen3moe_g64", "awqgemm", True, {}),
    "qwen3moe_g64/awqgemm compiled+graphs": ("qwen3moe_g64", "awqgemm", False, COMPILED),
    "mixtral_g128/awq_marlin": ("mixtral_g128", "awq_marlin", True, {}),
    "mixtral_g128/awqgemm eager": ("mixtral_g128", "awqgemm", True, {}),
}
#: checkpoints with mixture-of-experts layers
MOE_CKPTS = ("qwen3moe_g64", "mixtral_g128")
#: awqgemm vs awq_marlin, largest single-token |Δ| on MoE checkpoints: a router
#: near a tie may pick another expert in one engine than in the other (fp16
#: rounding of the router's input differs), which moves that token further than
#: any dense GEMM rounding does; the mean bound stays TOL_VS_MARLIN_MEAN.
TOL_VS_MARLIN_MAX_MOE = 1.0
#: AWQGEMM_GPU_VLLM_SELECT: comma-separated parts of run names to run ("moe" and "dense"
#: pick the runs of the MoE / dense checkpoints), e.g. "moe" or "qwen2,mixtral";
#: AWQGEMM_GPU_VLLM_RUNS=N then keeps the first N of those (each engine start costs GPU
#: time; all twelve take ~10 minutes with compilation); the tests of the others skip.
#: Default: all.
SELECT = [t.strip() for t in os.environ.get("AWQGEMM_GPU_VLLM_SELECT", "").split(",") if t.strip()]


def _selected(name: str) -> bool:
    if not SELECT:
        return True
    moe = RUNS[name][0] in MOE_CKPTS
    return any((t == "moe" and moe) or (t == "dense" and not moe) or (t in name) for t in SELECT)


_CHOSEN = [n for n in RUNS if _selected(n)]
N_RUNS = int(os.environ.get("AWQGEMM_GPU_VLLM_RUNS") or len(_CHOSEN))
SELECTED = {n: RUNS[n] for n in _CHOSEN[:N_RUNS]}
ALIAS, ALIAS_OF = "llama_g128/awq_turbomind eager", "llama_g128/awqgemm eager"
TP2_RUN = ("qwen2_g64/awqgemm eager TP=2", ("qwen2_g64", "awqgemm", True, {}))


def _specs() -> dict[str, Any]:
    import awq_tiny

    # head_dim 64 (FA3 on Hopper), hidden 256 = 2 groups of 128 / 4 of 64
    common = dict(hidden=256, intermediate=768, heads=4, kv_heads=2, layers=2, vocab=512)
    moe = dict(common, num_experts=8, top_k=2, moe_intermediate=256)
    return {
        "llama_g128": awq_tiny.TinySpec("llama", group_size=128, seed=21, **common),
        "qwen2_g64": awq_tiny.TinySpec("qwen2", group_size=64, seed=22, **common),
        "qwen3moe_g64": awq_tiny.TinySpec("qwen3_moe", group_size=64, seed=23, **moe),
        "mixtral_g128": awq_tiny.TinySpec("mixtral", group_size=128, seed=24, **dict(moe, num_experts=4)),
    }


def _prompts(model: Any, vocab: int, seed: int) -> list[list[int]]:
    """Prompts the model finds plausible: a few random ids, then tokens sampled
    (temperature 1) from the fp32 reference itself, so the logprobs compared are of
    the size the model gives its own text (random ids alone give ~-30 each)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (24, 48, 80):
        ids = [1] + [int(t) for t in torch.randint(3, vocab, (3,), generator=gen)]
        with torch.no_grad():
            while len(ids) < n:
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1].to(torch.float64)
                ids.append(int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)))
        out.append(ids)
    return out


def _out_dir(tmp: Path) -> Path:
    d = Path(os.environ.get("AWQGEMM_GPU_VLLM_OUT") or tmp)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run_engines(tmp: Path, name: str, runs: list[dict[str, Any]], prompts: list[list[int]]) -> dict[str, Any]:
    from conftest import engine_env

    spec, out, log = tmp / f"{name}-spec.json", tmp / f"{name}-out.json", tmp / f"{name}-log.txt"
    spec.write_text(json.dumps({"runs": runs, "prompts": prompts, "max_tokens": MAX_TOKENS}))
    env = engine_env(tmp / f"{name}-vllm-cache")
    env.pop("VLLM_TARGET_DEVICE", None)
    env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    t0 = time.perf_counter()
    rc: int | str
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), str(spec), str(out)],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=int(os.environ.get("AWQGEMM_GPU_VLLM_TIMEOUT", "600")),
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:  # keep the engines that finished (written after each)
            rc = "timeout"
    print(f"\n[{name}] {len(runs)} engine(s) in {time.perf_counter() - t0:.0f} s, rc={rc} (log {log})")
    if not out.exists():
        raise AssertionError(f"engine process {name} failed (rc={rc}):\n{log.read_text()[-6000:]}")
    if os.environ.get("AWQGEMM_GPU_VLLM_OUT"):
        (_out_dir(tmp) / f"{name}-engines.log").write_text(log.read_text())
    return {r["name"]: r for r in json.loads(out.read_text())}


def _run_dicts(
    names: dict[str, tuple[str, str, bool, dict[str, Any]]],
    paths: dict[str, str],
    prompts: dict[str, list[list[int]]],
) -> list[dict]:
    return [
        {
            "name": name,
            "model": paths[ckpt],
            "prompts": prompts[ckpt],
            "quantization": quant,
            "dtype": "float16",
            "enforce_eager": eager,
            "llm_kwargs": {**ENGINE_KWARGS, **extra},
        }
        for name, (ckpt, quant, eager, extra) in names.items()
    ]


def _deltas(a: list[float], b: list[float]) -> dict[str, float]:
    d = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return {"max": max(d), "mean": sum(d) / len(d), "tokens": len(d)}


class GpuRuns:
    def __init__(self, tmp: Path) -> None:
        import awq_tiny

        self.tmp = tmp
        self.tok = str(tmp / "tokenizer")
        awq_tiny.train_tokenizer(self.tok)
        self.specs = _specs()
        self.paths: dict[str, str] = {}
        self.ref_lp: dict[str, list[list[float]]] = {}
        self.prompts: dict[str, list[list[int]]] = {}
        for i, (key, spec) in enumerate(self.specs.items()):
            self.paths[key] = str(tmp / key)
            state = awq_tiny.write_awq_checkpoint(self.paths[key], spec, self.tok)
            model = awq_tiny.reference_model(spec, self.tok, state)
            self.prompts[key] = _prompts(model, spec.vocab, seed=7 + i)
            self.ref_lp[key] = [awq_tiny.teacher_forced_logprobs(model, p) for p in self.prompts[key]]
            del model
        runs = _run_dicts(SELECTED, self.paths, self.prompts)
        self.results = _run_engines(tmp, "gpu", runs, self.prompts[next(iter(self.specs))])
        self.rows: list[dict[str, Any]] = []
        for name, (ckpt, _, _, _) in SELECTED.items():
            res = self.results.get(name, {"error": "missing"})
            if "error" in res:
                continue
            row: dict[str, Any] = {
                "run": name,
                "quantization": res["quantization"],
                "start_s": res["start_s"],
            }
            row["vs_fp32"] = _deltas(self.flat(name), self.ref_flat(ckpt))
            marlin = f"{ckpt}/awq_marlin"
            if name != marlin and "error" not in self.results.get(marlin, {"error": 1}):
                row["vs_awq_marlin"] = _deltas(self.flat(name), self.flat(marlin))
            self.rows.append(row)

    def ref_flat(self, ckpt: str) -> list[float]:
        return [x for lp in self.ref_lp[ckpt] for x in lp]

    def flat(self, name: str) -> list[float]:
        return [x for s in self.results[name]["seqs"] for x in s["prompt_logprobs"]]

    def report(self, extra: list[dict[str, Any]] | None = None) -> None:
        rows = self.rows + (extra or [])
        lines = [
            "prompt logprobs |Δ| (natural log), fp16 engines",
            f"{'run':42s} {'vs fp32 max':>12s} {'mean':>8s} {'vs awq_marlin max':>18s} {'mean':>8s} {'start s':>8s}",
        ]
        for r in rows:
            vm = r.get("vs_awq_marlin")
            lines.append(
                f"{r['run']:42s} {r['vs_fp32']['max']:12.4f} {r['vs_fp32']['mean']:8.4f} "
                + (f"{vm['max']:18.4f} {vm['mean']:8.4f}" if vm else f"{'-':>18s} {'-':>8s}")
                + f" {r['start_s']:8.1f}"
            )
        print("\n" + "\n".join(lines))
        import torch
        import vllm

        doc = {
            "gpu": torch.cuda.get_device_name(),
            "vllm": vllm.__version__,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "prompt_tokens": {k: sum(len(p) - 1 for p in v) for k, v in self.prompts.items()},
            "checkpoints": {k: vars(v) for k, v in self.specs.items()},
            "tolerances": {
                "rel_vs_marlin": REL_VS_MARLIN,
                "floor": [FLOOR_MEAN, FLOOR_MAX],
                "cap": [CAP_MEAN, CAP_MAX],
                "vs_marlin": [TOL_VS_MARLIN_MEAN, TOL_VS_MARLIN_MAX],
                "alias_max": TOL_ALIAS_MAX,
            },
            "rows": rows,
            "served_by": {n: sorted(set(r.get("served_by", {}).values())) for n, r in self.results.items()},
            "errors": {n: r["error"] for n, r in self.results.items() if "error" in r},
        }
        (_out_dir(self.tmp) / "gpu-vllm-logprobs.json").write_text(json.dumps(doc, indent=1))


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory: pytest.TempPathFactory) -> GpuRuns:
    runs = GpuRuns(tmp_path_factory.mktemp("gpu-vllm"))
    runs.report()
    return runs


def _ok(runs: GpuRuns, name: str) -> dict[str, Any]:
    if name not in SELECTED:
        pytest.skip(f"{name}: not run (AWQGEMM_GPU_VLLM_SELECT={','.join(SELECT)}, AWQGEMM_GPU_VLLM_RUNS={N_RUNS})")
    res = runs.results.get(name, {"error": "did not finish (engine process cut off)"})
    assert "error" not in res, f"{name}: {res['error']}\n{res.get('traceback', '')[-3000:]}"
    return res


@pytest.mark.parametrize("name", list(RUNS))
def test_served_by_expected_method(gpu_runs: GpuRuns, name: str) -> None:
    res = _ok(gpu_runs, name)
    linears = {k: v for k, v in res["served_by"].items() if "proj" in k}
    assert linears, "no linear layers found"
    methods = set(linears.values())
    if "awq_marlin" in name:
        assert "AwqGemmLinearMethod" not in methods, methods
        assert all("AWQ" in m for m in methods), methods
    else:
        assert methods == {"AwqGemmLinearMethod"}, methods
        assert res["packed_params"], "no packed awqgemm layers"
    for seq in res["seqs"]:
        assert len(seq["tokens"]) == MAX_TOKENS
        assert all(0 <= t < 512 for t in seq["tokens"])


@pytest.mark.parametrize("name", [n for n in RUNS if "awq_marlin" not in n])
def test_close_to_fp32_reference(gpu_runs: GpuRuns, name: str) -> None:
    _ok(gpu_runs, name)
    ckpt = RUNS[name][0]
    _ok(gpu_runs, f"{ckpt}/awq_marlin")
    row = next(r for r in gpu_runs.rows if r["run"] == name)
    base = next(r for r in gpu_runs.rows if r["run"] == f"{ckpt}/awq_marlin")["vs_fp32"]
    got = row["vs_fp32"]
    lim_mean = min(CAP_MEAN, max(FLOOR_MEAN, REL_VS_MARLIN * base["mean"]))
    lim_max = min(CAP_MAX, max(FLOOR_MAX, REL_VS_MARLIN * base["max"]))
    assert got["mean"] <= lim_mean, (got, base)
    assert got["max"] <= lim_max, (got, base)


@pytest.mark.parametrize("name", [n for n in RUNS if "awq_marlin" not in n])
def test_close_to_awq_marlin(gpu_runs: GpuRuns, name: str) -> None:
    _ok(gpu_runs, name)
    _ok(gpu_runs, f"{RUNS[name][0]}/awq_marlin")
    row = next(r for r in gpu_runs.rows if r["run"] == name)
    got = row["vs_awq_marlin"]
    assert got["mean"] <= TOL_VS_MARLIN_MEAN, got
    tol_max = TOL_VS_MARLIN_MAX_MOE if RUNS[name][0] in MOE_CKPTS else TOL_VS_MARLIN_MAX
    assert got["max"] <= tol_max, got


@pytest.mark.parametrize("name", [n for n in RUNS if RUNS[n][0] in MOE_CKPTS])
def test_moe_layers_served_by_expected_method(gpu_runs: GpuRuns, name: str) -> None:
    """awqgemm runs: every MoE layer on AwqGemmMoEMethod (the packed experts in
    place), the router unquantized; awq_marlin runs: vLLM's own AWQ MoE method."""
    res = _ok(gpu_runs, name)
    served = res["served_by"]
    experts = {k: v for k, v in served.items() if ".experts" in k}
    assert experts, served
    if "awq_marlin" in name:
        assert all("AWQ" in m and "AwqGemm" not in m for m in experts.values()), experts
        return
    assert set(experts.values()) == {"AwqGemmMoEMethod"}, experts
    layers = res["moe_layers"][0]
    assert len(layers) == gpu_runs.specs[RUNS[name][0]].layers, layers
    for info in layers.values():
        assert info["params"] == sorted(
            ["awqgemm_w13_qweight", "awqgemm_w13_scales", "awqgemm_w2_qweight", "awqgemm_w2_scales"]
        ), info
    gates = {k: v for k, v in served.items() if k.endswith(".gate")}
    assert gates and set(gates.values()) == {"UnquantizedLinearMethod"}, gates


def test_alias_serves_the_same(gpu_runs: GpuRuns) -> None:
    a = _ok(gpu_runs, ALIAS)
    assert a["quantization"] in ("awq_turbomind", "awqgemm"), a["quantization"]
    _ok(gpu_runs, ALIAS_OF)
    d = _deltas(gpu_runs.flat(ALIAS), gpu_runs.flat(ALIAS_OF))
    assert d["max"] <= TOL_ALIAS_MAX, d


def test_tensor_parallel_2(gpu_runs: GpuRuns) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"TP=2 needs 2 GPUs; this machine has {torch.cuda.device_count()} (not run)")
    name, run = TP2_RUN
    runs = _run_dicts({name: run}, gpu_runs.paths, gpu_runs.prompts)
    runs[0]["tp"] = 2
    res = _run_engines(gpu_runs.tmp, "gpu-tp2", runs, gpu_runs.prompts["qwen2_g64"])[name]
    assert "error" not in res, res["error"]
    gpu_runs.results[name] = res
    row = {
        "run": name,
        "quantization": res["quantization"],
        "start_s": res["start_s"],
        "vs_fp32": _deltas(gpu_runs.flat(name), gpu_runs.ref_flat("qwen2_g64")),
        "vs_awq_marlin": _deltas(gpu_runs.flat(name), gpu_runs.flat("qwen2_g64/awq_marlin")),
    }
    gpu_runs.report([row])
    assert row["vs_awq_marlin"]["mean"] <= TOL_VS_MARLIN_MEAN, row
    assert row["vs_fp32"]["mean"] <= CAP_MEAN, row


# ---------------------------------------------------------------------------
# the engine process: engine_runner with GPU engine arguments
# ---------------------------------------------------------------------------


def _engine_process(spec_path: str, out_path: str) -> int:
    import torch
    import vllm

    import engine_runner

    base_llm = vllm.LLM
    base_run_one = engine_runner.run_one

    def run_one(run: dict[str, Any], prompts: list[list[int]], max_tokens: int) -> dict:
        def llm(**kwargs: Any) -> Any:
            gc.collect()
            torch.cuda.empty_cache()  # the previous engine's memory, for vLLM's free-memory check
            kwargs.update(run.get("llm_kwargs", {}))
            return base_llm(**kwargs)

        vllm.LLM = llm
        try:
            print(f"=== {run['name']} ===", flush=True)
            return base_run_one(run, run.get("prompts") or prompts, max_tokens)
        finally:
            vllm.LLM = base_llm

    engine_runner.run_one = run_one
    return engine_runner.main(spec_path, out_path)


if __name__ == "__main__":
    sys.exit(_engine_process(sys.argv[1], sys.argv[2]))
