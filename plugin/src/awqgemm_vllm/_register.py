"""Registration with vLLM (called from the ``vllm.general_plugins`` entry point)."""

from __future__ import annotations

import threading

from ._policy import ALIAS_NAME, CANONICAL_NAME

_lock = threading.Lock()
_registered = False


def register() -> None:
    """Register ``awqgemm`` and its alias ``awq_turbomind`` as vLLM quantization
    methods.  Idempotent: vLLM calls it in every process, possibly several times."""
    global _registered
    with _lock:
        if _registered:
            return
        from vllm.model_executor.layers.quantization import (
            register_quantization_config,
        )

        from .config import AwqGemmConfig

        for name in (CANONICAL_NAME, ALIAS_NAME):
            register_quantization_config(name)(AwqGemmConfig)
        _registered = True


def enable_weight_loader_v2() -> None:
    """Let vLLM's linear layers use the v2 weight loader for our linear method
    (needed for fused QKV / gate_up loading of packed parameters).  vLLM picks
    the loader by the method's class name; idempotent."""
    from vllm.model_executor.layers import linear as vllm_linear

    from .linear import AwqGemmLinearMethod

    supported = vllm_linear.WEIGHT_LOADER_V2_SUPPORTED
    if AwqGemmLinearMethod.__name__ in supported:
        return
    registrar = getattr(vllm_linear, "register_weight_loader_v2_supported_method", None)
    if registrar is not None:
        registrar(AwqGemmLinearMethod)
    else:  # older vLLM without the helper
        supported.append(AwqGemmLinearMethod.__name__)
