"""MoE benchmark: awqgemm.fused_moe (grouped AWQ kernels) vs a dense-fp16 per-expert baseline
(torch ops, routing read back to the host outside the timed region) and, when vLLM is importable
and its Marlin MoE runs, vllm's fused_marlin_moe.

Shapes: Qwen3-30B-A3B (E=128, top-8, H=2048, I=768) and Mixtral-8x7B (E=8, top-2, H=4096,
I=14336), tokens 1..4096, uniform random routing. Prints a table; writes JSON (+ PNG when
matplotlib is there) under --out.

    python benchmarks/moe.py --out benchmarks/results [--tokens 1,8,64,512,4096] [--deadline 240]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {  # name: (experts, top_k, hidden, intermediate)
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "mixtral-8x7b": (8, 2, 4096, 14336),
}
TOKENS = (1, 4, 16, 64, 256, 1024, 4096)
GROUP = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds; rows not reached are left out")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on any device, timer not trusted")
    return p.parse_args(argv)


def stacked_awq(num, k, n, dtype, device):
    from awqgemm.testing import random_awq

    parts = [random_awq(k, n, GROUP, dtype, device, seed=e) for e in range(num)]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(3))


def time_us(fn, replays, graph):
    """Median us per call: CUDA graph replays (host excluded) or eager calls between events."""
    fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            fn()
        fn = g.replay
        fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return statistics.median(times)


def bind(fn, *args):
    return lambda: fn(*args)


def dense_baseline(x, w13d, w2d, tw, ti):
    """fp16 dense per expert with torch ops; the routing is read back before timing (a host sync
    a real layer would pay), so this times the matmuls, activation and combine only."""
    num, _, two_i = w13d.shape
    inter = two_i // 2
    ids = ti.reshape(-1).long()
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=num).tolist()
    tok = order // ti.shape[1]
    wts = tw.reshape(-1)[order].to(x.dtype)

    def run():
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        start = 0
        for e, c in enumerate(counts):
            if c:
                rows = tok[start : start + c]
                h = x[rows] @ w13d[e]
                a = F.silu(h[:, :inter]) * h[:, inter:]
                out.index_add_(0, rows, ((a @ w2d[e]) * wts[start : start + c, None]).float())
            start += c
        return out.to(x.dtype)

    return run


def marlin_contender(x, ck13, ck2, tw, ti):
    """vllm's fused_marlin_moe on the same AWQ experts, or the reason it is not run."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # any import failure means "not available here"
        return None, f"vllm not importable: {type(exc).__name__}"
    return None, "not implemented in this benchmark yet (vLLM's Marlin MoE repack API varies by version)"


def main(argv=None):
    args = parse_args(argv)
    import awqgemm
    from awqgemm.moe import grouped_plan_info

    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    shapes = {n: SHAPES[n] for n in args.shapes.split(",")}
    tokens = [int(t) for t in args.tokens.split(",")]
    if args.dry_run:
        shapes = {n: (min(e, 8), min(k, 2), 256, 128) for n, (e, k, _, _) in shapes.items()}
        tokens = tokens[:3]
    start = time.time()
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    bw = 3.35e12 if "H100" in gpu else 4.8e12 if "H200" in gpu else None
    rows = []
    for name, (num, top_k, hidden, inter) in shapes.items():
        if time.time() - start > args.deadline:
            break
        ck13 = stacked_awq(num, hidden, 2 * inter, dtype, device)
        ck2 = stacked_awq(num, inter, hidden, dtype, device)
        w13 = awqgemm.pack_awq_experts(*ck13, GROUP)
        w2 = awqgemm.pack_awq_experts(*ck2, GROUP)
        w13d = torch.stack([awqgemm.dequantize_awq(*(t[e] for t in ck13), GROUP) for e in range(num)])
        w2d = torch.stack([awqgemm.dequantize_awq(*(t[e] for t in ck2), GROUP) for e in range(num)])
        expert_bytes = (w13.qweight[0].numel() + w2.qweight[0].numel()) * 4 + (
            w13.scales[0].numel() + w2.scales[0].numel()
        ) * w13.scales.element_size()
        for t in tokens:
            if time.time() - start > args.deadline:
                print(f"deadline reached: {name} from T={t} on not run", file=sys.stderr)
                break
            gen = torch.Generator().manual_seed(t)
            ti = torch.rand(t, num, generator=gen).topk(top_k, dim=1).indices.to(torch.int32).to(device)
            tw = torch.softmax(torch.randn(t, top_k, generator=gen), dim=1).to(device)
            x = torch.randn(t, hidden, dtype=dtype, device=device)
            active = int(torch.unique(ti).numel())
            row = {"shape": name, "tokens": t, "experts": num, "top_k": top_k, "active_experts": active}
            if device == "cuda":
                row["plan_gate_up"] = grouped_plan_info(t * top_k, num, 2 * inter, hidden, dtype)
                row["plan_down"] = grouped_plan_info(t * top_k, num, hidden, inter, dtype)
                fn = bind(awqgemm.fused_moe, x, w13, w2, tw, ti)
                row["awqgemm_graph_us"] = time_us(fn, args.replays, graph=True)
                row["awqgemm_eager_us"] = time_us(fn, args.replays, graph=False)
                row["dense_fp16_eager_us"] = time_us(dense_baseline(x, w13d, w2d, tw, ti), args.replays, graph=False)
                got, ref = awqgemm.fused_moe(x, w13, w2, tw, ti).float(), dense_baseline(x, w13d, w2d, tw, ti)()
                row["rel_err_vs_dense"] = (
                    torch.linalg.vector_norm(got - ref.float()) / torch.linalg.vector_norm(ref.float())
                ).item()
                if bw:
                    row["awq_weight_floor_us"] = active * expert_bytes / bw * 1e6
                _, why = marlin_contender(x, ck13, ck2, tw, ti)
                row["marlin"] = why
            else:
                awqgemm.fused_moe(x, w13, w2, tw, ti)
            rows.append(row)
            if device == "cuda":
                print(
                    f"{name:14s} T={t:5d} active={active:3d}  awqgemm graph {row['awqgemm_graph_us']:9.1f} us  "
                    f"eager {row['awqgemm_eager_us']:9.1f} us  dense-fp16 {row['dense_fp16_eager_us']:9.1f} us  "
                    f"floor {row.get('awq_weight_floor_us', math.nan):7.1f} us  "
                    f"gate_up {row['plan_gate_up']['tile_tokens']}x{row['plan_gate_up']['splits']}  "
                    f"err {row['rel_err_vs_dense']:.1e}",
                    flush=True,
                )
        del w13d, w2d
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    tag = gpu.lower().replace(" ", "-").replace("nvidia-", "")[:24]
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"moe-{tag}-{stamp}" + ("-dry" if args.dry_run else ""))
    info = {"gpu": gpu, "dtype": args.dtype, "group": GROUP, "build": awqgemm.build_info(), "rows": rows}
    with open(base + ".json", "w") as f:
        json.dump(info, f, indent=1, default=str)
    if device == "cuda" and rows:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4), squeeze=False)
            for ax, name in zip(axes[0], shapes, strict=False):
                rs = [r for r in rows if r["shape"] == name]
                if not rs:
                    continue
                ts = [r["tokens"] for r in rs]
                for key, label in (
                    ("awqgemm_graph_us", "awqgemm (graph)"),
                    ("dense_fp16_eager_us", "dense fp16 per expert (eager)"),
                    ("awq_weight_floor_us", "int4 weight-read floor"),
                ):
                    if key in rs[0]:
                        ax.plot(ts, [r[key] for r in rs], marker="o", label=label)
                ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="us per MoE layer", title=f"{name} ({gpu})")
                ax.legend()
            fig.tight_layout()
            fig.savefig(base + ".png", dpi=100)
        except ImportError:
            pass
    print(f"wrote {base}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
