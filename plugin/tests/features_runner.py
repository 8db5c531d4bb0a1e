"""Run one vLLM engine scenario of test_integration_features.py in a fresh process.

``python features_runner.py SPEC OUT``: SPEC is JSON with ``scenario`` and its
arguments; OUT receives teacher-forced prompt logprobs (per phase) and which
quant method served each module.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from engine_probe import served_by


def _prompt_logprobs(llm: Any, prompts: list[list[int]], lora: Any = None) -> list[list[float]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=lora)
    return [
        [float(lp[t].logprob) for lp, t in zip(out.prompt_logprobs[1:], p[1:], strict=True)]
        for p, out in zip(prompts, outs, strict=True)
    ]


def _greedy(llm: Any, prompts: list[list[int]], lora: Any = None) -> list[dict[str, list]]:
    """Greedy continuations with the chosen tokens' logprobs.  (The LoRA runs use
    these, not prompt logprobs: vLLM 0.32's CPU LoRA logits path fails on prompt
    logprobs, sizing its per-request indices by requests instead of tokens.)"""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=1, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=lora)
    seqs = []
    for out in outs:
        tokens = list(out.outputs[0].token_ids)
        logprobs = [float(lp[t].logprob) for lp, t in zip(out.outputs[0].logprobs, tokens, strict=True)]
        seqs.append({"tokens": tokens, "logprobs": logprobs})
    return seqs


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=spec["model"],
        dtype=spec.get("dtype", "float32"),
        quantization="awqgemm",
        enforce_eager=True,
        max_model_len=256,
        kv_cache_memory_bytes=256 * 2**20,
        seed=0,
        max_num_seqs=8,
        enable_prefix_caching=False,  # a reload must not reuse the old model's KV
    )
    scenario = spec["scenario"]
    if scenario == "lora":
        kwargs.update(enable_lora=True, max_lora_rank=spec["rank"], max_loras=1)
    llm = LLM(**kwargs)
    prompts = spec["prompts"]
    out: dict[str, Any] = {"served_by": llm.apply_model(served_by)[0]}
    if scenario == "lora":
        from vllm.lora.request import LoRARequest

        out["before"] = _greedy(llm, prompts)
        out["lora"] = _greedy(llm, prompts, LoRARequest("adapter", 1, spec["adapter"]))
        out["after"] = _greedy(llm, prompts)  # the base model again
        return out
    out["before"] = _prompt_logprobs(llm, prompts)
    if scenario == "reload":
        # in-place reload from another checkpoint (what RL weight sync does)
        llm.collective_rpc("reload_weights", kwargs={"weights_path": spec["reload_from"]})
        out["after"] = _prompt_logprobs(llm, prompts)
        out["served_by_after"] = llm.apply_model(served_by)[0]
    return out


def main(spec_path: str, out_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result = run(spec)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
