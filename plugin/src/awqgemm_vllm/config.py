"""The ``awqgemm`` quantization method for vLLM (also registered as ``awq_turbomind``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)

from . import _platform
from ._policy import (
    CANONICAL_NAME,
    CONFIG_FILENAMES,
    MIN_CAPABILITY,
    AwqSettings,
    _check_platform,
    batch_invariance_error,
    decide_override,
    env_take_over,
    is_awq_checkpoint,
    module_is_skipped,
    moe_is_skipped,
    offload_error,
    parse_awq_config,
    unquantized_modules_from_metadata,
    unquantized_modules_from_safetensors,
)

logger = logging.getLogger("vllm.awqgemm_vllm")


class AwqGemmConfig(QuantizationConfig):
    """AWQ checkpoints (4-bit, with or without zero points, group 32/64/128)
    served by awqgemm."""

    def __init__(self, settings: AwqSettings, full_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.weight_bits = settings.weight_bits
        self.group_size = settings.group_size
        self.zero_point = settings.zero_point
        self.lm_head_quantized = settings.lm_head_quantized
        self.modules_to_not_convert: list[str] = list(settings.modules_to_not_convert)
        #: Whole module names found unquantized in the checkpoint's safetensors.
        self.scanned_unquantized: list[str] = []
        self.full_config = dict(full_config or {})

    def __repr__(self) -> str:
        return (
            f"AwqGemmConfig(weight_bits={self.weight_bits}, "
            f"group_size={self.group_size}, zero_point={self.zero_point}, "
            f"lm_head_quantized={self.lm_head_quantized}, "
            f"modules_to_not_convert={self.modules_to_not_convert})"
        )

    # ---- QuantizationConfig interface -------------------------------------------

    @classmethod
    def get_name(cls) -> str:  # type: ignore[override]
        return CANONICAL_NAME

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        dtypes = [torch.float16, torch.bfloat16]
        if _platform.current().kind == "cpu":
            dtypes.append(torch.float32)  # awqgemm's CPU reference path
        return dtypes

    @classmethod
    def get_min_capability(cls) -> int:
        return MIN_CAPABILITY

    @staticmethod
    def get_config_filenames() -> list[str]:
        return list(CONFIG_FILENAMES)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AwqGemmConfig:
        settings = parse_awq_config(config)
        _check_platform(_platform.current())
        if batch_invariant():
            raise batch_invariance_error()
        return cls(settings, config)

    @classmethod
    def override_quantization_method(  # type: ignore[override]
        cls,
        hf_quant_cfg: dict[str, Any],
        user_quant: str | None,
        hf_config: Any = None,
    ) -> str | None:
        name, reason = decide_override(
            hf_quant_cfg,
            user_quant,
            _platform.current(),
            # the switch matters (and is validated) only for AWQ checkpoints
            take_over_all=is_awq_checkpoint(hf_quant_cfg) and env_take_over(),
            hf_config=hf_config,
            batch_invariant=batch_invariant(),
            moe_supported=_library_has_moe(),
        )
        if name is not None:
            logger.info("awqgemm serves this AWQ checkpoint: %s.", reason)
        else:
            logger.debug("awqgemm leaves this checkpoint to vLLM: %s.", reason)
        return name

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.linear import (
            LinearBase,
            UnquantizedLinearMethod,
        )
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        is_lm_head = isinstance(layer, ParallelLMHead)
        if isinstance(layer, LinearBase) or (is_lm_head and self.lm_head_quantized):
            if module_is_skipped(
                prefix,
                self.modules_to_not_convert,
                self.packed_modules_mapping,
                self.scanned_unquantized,
            ):
                return UnquantizedLinearMethod()
            from . import _register
            from .linear import AwqGemmLinearMethod

            _register.enable_weight_loader_v2()
            return AwqGemmLinearMethod(self, prefix)
        if _is_moe_layer(layer):
            if moe_is_skipped(prefix, self.modules_to_not_convert, self.scanned_unquantized):
                from vllm.model_executor.layers.fused_moe import UnquantizedFusedMoEMethod

                return UnquantizedFusedMoEMethod(layer.moe_config)
            from .moe import AwqGemmMoEMethod

            return AwqGemmMoEMethod(self, layer.moe_config, prefix)
        return None

    def check_serving_options(self, prefix: str) -> None:
        """Engine options awqgemm layers cannot serve, checked as each layer is
        created (in the process that builds the model)."""
        if batch_invariant():
            raise batch_invariance_error()
        offload = _weight_offloading()
        if offload:
            raise offload_error(prefix, offload)

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        if self.modules_to_not_convert:
            self.modules_to_not_convert = hf_to_vllm_mapper.apply_list(self.modules_to_not_convert)
        if self.scanned_unquantized:
            self.scanned_unquantized = hf_to_vllm_mapper.apply_list(self.scanned_unquantized)

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        # Checkpoints that leave layers unquantized without listing them in
        # modules_to_not_convert: find them from the safetensors headers, of a
        # local folder or of a Hub repository (through vLLM's metadata reader).
        if self.modules_to_not_convert:
            return
        found = unquantized_modules_from_safetensors(model_name)
        if found is None:
            metadata = _hub_safetensors_metadata(model_name, revision)
            found = unquantized_modules_from_metadata(metadata) if metadata else None
        if found:
            self.scanned_unquantized = found


def batch_invariant() -> bool:
    """vLLM's VLLM_BATCH_INVARIANT switch, read as vLLM reads it."""
    import vllm.envs as envs

    return bool(getattr(envs, "VLLM_BATCH_INVARIANT", False))


def _weight_offloading() -> str:
    """The CPU weight offloading configured for the model being built, as the
    option that asks for it, or '' when there is none."""
    from vllm.config import get_current_vllm_config

    vllm_config = get_current_vllm_config()
    offload = getattr(vllm_config, "offload_config", None)
    uva = getattr(offload, "uva", None)
    gb = getattr(uva, "cpu_offload_gb", None)
    if gb is None:  # older vLLM: cache_config.cpu_offload_gb
        gb = getattr(getattr(vllm_config, "cache_config", None), "cpu_offload_gb", 0)
    if gb:
        return f"--cpu-offload-gb {gb}"
    group = getattr(getattr(offload, "prefetch", None), "offload_group_size", 0)
    if group:
        return f"--offload-group-size {group}"
    return ""


def _hub_safetensors_metadata(model_name: str, revision: str | None) -> dict[str, Any] | None:
    """Tensor name -> metadata (with 'dtype') of a Hub checkpoint, through vLLM's
    reader (which also looks in the local Hugging Face cache); None when this
    vLLM has no such reader or nothing can be read."""
    try:
        from vllm.transformers_utils.config import get_safetensors_params_metadata
    except ImportError:  # pragma: no cover - older vLLM
        return None
    try:
        return get_safetensors_params_metadata(model_name, revision=revision) or None
    except Exception as exc:  # network, auth, missing repo: keep serving
        logger.warning(
            "awqgemm could not read the safetensors headers of %s (%s); layers left "
            "unquantized must then be listed in modules_to_not_convert.",
            model_name,
            exc,
        )
        return None


def _library_has_moe() -> bool:
    """Whether the installed awqgemm has the MoE op (False where awqgemm does
    not import: the dense path then reports that)."""
    try:
        from ._awqgemm import library_has_moe
    except ImportError:
        return False
    return library_has_moe()


def _is_moe_layer(layer: torch.nn.Module) -> bool:
    for mod, cls_name in (
        ("vllm.model_executor.layers.fused_moe", "RoutedExperts"),
        ("vllm.model_executor.layers.fused_moe", "FusedMoE"),
    ):
        try:
            module = __import__(mod, fromlist=[cls_name])
        except ImportError:  # pragma: no cover - depends on the vLLM version
            continue
        cls = getattr(module, cls_name, None)
        if isinstance(cls, type) and isinstance(layer, cls):
            return True
    return False
