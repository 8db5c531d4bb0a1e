"""Functions the engine runner ships to vLLM workers with ``LLM.apply_model``.

They live in an importable module (not the runner's ``__main__``) so that
tensor-parallel worker processes can unpickle them by reference.
"""

from __future__ import annotations

from typing import Any


def served_by(model: Any) -> dict[str, str]:
    """Quant method class of every module that has one."""
    out = {}
    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if qm is not None:
            out[name] = type(qm).__name__
    return out


def packed_layers(model: Any) -> dict[str, list[str]]:
    """Parameters of awqgemm layers after loading (checkpoint tensors must be gone)."""
    out = {}
    for name, mod in model.named_modules():
        if type(getattr(mod, "quant_method", None)).__name__ == "AwqGemmLinearMethod":
            out[name] = sorted(n for n, _ in mod.named_parameters(recurse=False))
    return out


def moe_layers(model: Any) -> dict[str, dict[str, Any]]:
    """awqgemm MoE layers after loading: their parameters, how many experts this
    rank holds of how many, and the packed w13 shape."""
    out = {}
    for name, mod in model.named_modules():
        if type(getattr(mod, "quant_method", None)).__name__ == "AwqGemmMoEMethod":
            w13 = getattr(mod, "awqgemm_w13_qweight", None)
            out[name] = {
                "params": sorted(n for n, _ in mod.named_parameters(recurse=False)),
                "local_experts": int(mod.local_num_experts),
                "global_experts": int(mod.global_num_experts),
                "w13_packed_shape": list(w13.shape) if w13 is not None else None,
            }
    return out
