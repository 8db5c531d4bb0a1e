"""The benchmark's layer shapes, sweep constants, and the bytes / floor arithmetic."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

# [K, N] at TP1 in the order qkv, o_proj, gate_up, down (vLLM's kernel-benchmark shape sets).
# [K, N] at TP1 in the order qkv, o_proj, gate_up, down (vLLM's kernel-benchmark shape sets).
MODELS: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "title": "Llama-3-8B",
        "layers": 32,
        "shapes": [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)],
    },
    "qwen2.5-7b": {
        "title": "Qwen2.5-7B",
        "layers": 28,
        "shapes": [(3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)],
    },
    "qwen2.5-32b": {
        "title": "Qwen2.5-32B",
        "layers": 64,
        "shapes": [(5120, 7168), (5120, 5120), (5120, 55296), (27648, 5120)],
    },
    "llama2-70b": {
        "title": "Llama-2-70B",
        "layers": 80,
        "shapes": [(8192, 10240), (8192, 8192), (8192, 57344), (28672, 8192)],
    },
}
LAYERS = ("qkv", "o", "gate_up", "down")
ROW_PARALLEL = ("o", "down")  # TP splits K; qkv and gate_up are column-parallel (TP splits N)
TPS = (1, 2)

M_FULL = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
M_QUICK = (1, 4, 8, 16, 64, 256, 1024, 4096)
M_DRY = (1, 2, 8, 16, 64, 256, 1024)  # --dry-run default: CPU matmuls at M = 8192 would take minutes
GROUP_MAIN = 128
GROUP_EXTRA = (64, 32)
GROUP_SHAPE = "llama3-8b/down/tp1"  # the one shape also run at groups 64 and 32

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Shape:
    model: str
    layer: str
    tp: int
    K: int
    N: int

    @property
    def label(self) -> str:
        return f"{self.model}/{self.layer}/tp{self.tp}"


def all_shapes(shrink: bool = False) -> list[Shape]:
    """Every (model, layer, TP) shape; ``shrink`` gives tiny stand-ins with the same labels (dry run)."""
    out = []
    for tp in TPS:
        for model, spec in MODELS.items():
            for layer, (k, n) in zip(LAYERS, spec["shapes"], strict=True):
                if layer in ROW_PARALLEL:
                    k //= tp
                else:
                    n //= tp
                if shrink:
                    k = _round_up(max(k // 32, 1), 128)
                    n = _round_up(max(n // 32, 1), 16)
                out.append(Shape(model, layer, tp, k, n))
    return out


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def select_shapes(shapes: Sequence[Shape], spec: list[str] | None) -> list[Shape]:
    """--shapes tokens: 'KxN', or '/'-joined parts each equal to one of a label's parts (model, layer, tpN),
    e.g. llama3-8b, gate_up, tp2, qwen2.5-32b/down, llama2-70b/o/tp1; a shape is kept if any token matches."""
    if not spec:
        return list(shapes)
    keep = []
    for s in shapes:
        parts = set(s.label.split("/"))
        for tok in spec:
            t = tok.lower()
            if t == f"{s.K}x{s.N}" or all(p in parts for p in t.split("/")):
                keep.append(s)
                break
    return keep


def awq_bytes(M: int, K: int, N: int, G: int) -> int:
    """Fewest bytes a W4A16 GEMM moves: int4 weights, fp16 scales, 4-bit zeros, x in, out."""
    return K * N // 2 + (K // G) * N * 2 + (K // G) * N // 2 + M * K * 2 + M * N * 2


def dense_bytes(M: int, K: int, N: int) -> int:
    return K * N * 2 + M * K * 2 + M * N * 2


def floor_us(nbytes: int, flops: float, bw: float, rate: float) -> tuple[float, str]:
    t_mem, t_mma = nbytes / bw * 1e6, flops / rate * 1e6
    return (t_mem, "hbm") if t_mem >= t_mma else (t_mma, "mma")


def copies_for(shape: Shape, G: int, M: int, rotate_bytes: int, max_copies: int) -> int:
    """Calls per graph R: enough distinct weight copies (and x, out) that one replay touches > rotate_bytes,
    so each call's weight was last read > L2 ago. At large M x and out alone flush L2 and R drops to 1,
    which keeps compute-bound points from costing R times their run time."""
    per = awq_bytes(M, shape.K, shape.N, G)
    return max(1, min(max_copies, math.ceil(rotate_bytes / per)))
