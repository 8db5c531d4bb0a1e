"""Registration with vLLM (called from the ``vllm.general_plugins`` entry point)."""

from __future__ import annotations

import logging
import threading

from ._policy import (
    ALIAS_NAME,
    ALLOW_UNTESTED_VLLM_ENV,
    CANONICAL_NAME,
    check_vllm_version,
    env_flag,
    vllm_requirement,
)

logger = logging.getLogger("vllm.awqgemm_vllm")

_lock = threading.Lock()
_registered = False


def check_installed_vllm() -> str:
    """The installed vLLM's version, checked against the supported range (the
    one written in ``vllm-requirement.txt``); raises naming both otherwise."""
    import vllm

    version = str(getattr(vllm, "__version__", "0"))
    requirement = vllm_requirement()
    if not check_vllm_version(version, requirement, env_flag(ALLOW_UNTESTED_VLLM_ENV)):
        logger.warning(
            "awqgemm-vllm supports %s; registering with vLLM %s anyway (%s=1).",
            requirement,
            version,
            ALLOW_UNTESTED_VLLM_ENV,
        )
    return version


def register() -> None:
    """Register ``awqgemm`` and its alias ``awq_turbomind`` as vLLM quantization
    methods.  Idempotent: vLLM calls it in every process, possibly several times."""
    global _registered
    with _lock:
        if _registered:
            return
        check_installed_vllm()
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
