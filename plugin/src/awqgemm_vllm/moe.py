"""Mixture-of-experts layers of AWQ checkpoints, computed by awqgemm.

vLLM's MoE layer (``RoutedExperts``, built by ``FusedMoE``) creates the
per-expert AWQ tensors through :meth:`AwqGemmMoEMethod.create_weights` and
loads them with its own expert weight loader (tensor-parallel shards of the
intermediate size, expert-parallel local experts).  After loading they are
repacked once with ``awqgemm.pack_awq_experts``.  Routing (top-k, grouped
top-k, renormalization, scoring function, score-correction bias, routed scaling
factor) stays vLLM's: its router picks the experts and hands this method the
top-k ids and weights; ``awqgemm.fused_moe`` then runs gate_up, SiLU-and-mul
and down for every chosen expert and returns the weighted sum over the top-k
(the reduce over experts is done inside the op; the reduce over
tensor/expert-parallel ranks stays vLLM's all-reduce).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from . import _platform
from ._awqgemm import awqgemm, library_has_moe
from ._policy import (
    CANONICAL_NAME,
    PACK_FACTOR,
    SYMMETRIC_ZEROS_WORD,
    AwqGemmConfigError,
    check_act_dtype,
    check_moe_shard,
)

if TYPE_CHECKING:
    from .config import AwqGemmConfig

#: The checkpoint-layout parameters vLLM's expert weight loader fills.
W13_PARAMS = ("w13_qweight", "w13_qzeros", "w13_scales")
W2_PARAMS = ("w2_qweight", "w2_qzeros", "w2_scales")
CHECKPOINT_PARAMS = W13_PARAMS + W2_PARAMS
#: The packed parameters that replace them.
PACKED_W13_QWEIGHT = "awqgemm_w13_qweight"
PACKED_W13_SCALES = "awqgemm_w13_scales"
PACKED_W2_QWEIGHT = "awqgemm_w2_qweight"
PACKED_W2_SCALES = "awqgemm_w2_scales"
PACKED_PARAMS = (PACKED_W13_QWEIGHT, PACKED_W13_SCALES, PACKED_W2_QWEIGHT, PACKED_W2_SCALES)
#: Plain attributes: (local experts, hidden, intermediate per partition, group)
#: and the packed layout id.
SHAPE_ATTR = "awqgemm_moe_shape"
LAYOUT_ATTR = "awqgemm_moe_layout"

#: The activation awqgemm.fused_moe computes between the two GEMMs.
SUPPORTED_ACTIVATION = "silu"


def library_moe_error(prefix: str) -> AwqGemmConfigError:
    return AwqGemmConfigError(
        f"{prefix or '<MoE layer>'}: the installed awqgemm library "
        f"({getattr(awqgemm, '__version__', '?')}) has no mixture-of-experts op "
        "(awqgemm.fused_moe / awqgemm.pack_awq_experts). Install an awqgemm with MoE "
        f"support, or serve this model with vLLM's own AWQ (drop '--quantization {CANONICAL_NAME}')."
    )


def _base_apply_parameters() -> list[str]:
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase

    return list(inspect.signature(FusedMoEMethodBase.apply).parameters)


def moe_interface(params: list[str] | None = None) -> str:
    """Which MoE method interface this vLLM calls, from the parameters of
    ``FusedMoEMethodBase.apply``:

    * ``"routed"``: vLLM's router has already chosen the experts; ``apply`` gets
      ``topk_weights`` and ``topk_ids`` (vLLM 2026 releases: 0.2x up to 0.33);
    * ``"router_logits"``: ``apply`` gets the router logits and the method routes
      through the layer's ``select_experts`` (vLLM 0.10 .. 0.1x);
    * ``"unknown"``: anything else.
    """
    names = _base_apply_parameters() if params is None else params
    if "topk_weights" in names and "topk_ids" in names:
        return "routed"
    if "router_logits" in names:
        return "router_logits"
    return "unknown"


def _activation_name(activation: Any) -> str:
    """vLLM's activation as a lower-case string (an enum since 0.1x, a str before)."""
    value = getattr(activation, "value", activation)
    return str(value).lower()


def check_moe_layer_options(prefix: str, moe: Any) -> None:
    """Refuse, naming the option, what awqgemm's MoE path does not compute.
    ``moe`` is vLLM's ``FusedMoEConfig`` (attributes read with defaults, so older
    and newer vLLM configs both pass through)."""
    name = prefix or "<MoE layer>"
    act = _activation_name(getattr(moe, "activation", SUPPORTED_ACTIVATION))
    gated = getattr(moe, "is_act_and_mul", True)
    if act != SUPPORTED_ACTIVATION or not gated:
        raise AwqGemmConfigError(
            f"{name}: awqgemm's MoE path computes SiLU(gate) * up experts; this layer's "
            f"activation is {act!r}{'' if gated else ' (not gated)'}. Serve this model "
            f"with vLLM's own AWQ (drop '--quantization {CANONICAL_NAME}')."
        )
    for attr in ("swiglu_limit", "swiglu_alpha", "swiglu_beta"):
        if getattr(moe, attr, None) is not None:
            raise AwqGemmConfigError(
                f"{name}: this layer clamps or scales its SwiGLU ({attr}={getattr(moe, attr)}), "
                "which awqgemm's MoE path does not compute. Serve this model with vLLM's own "
                f"AWQ (drop '--quantization {CANONICAL_NAME}')."
            )
    if getattr(moe, "has_bias", False):
        raise AwqGemmConfigError(
            f"{name}: this layer's experts have biases, which awqgemm's MoE path does not "
            f"add. Serve this model with vLLM's own AWQ (drop '--quantization {CANONICAL_NAME}')."
        )
    if getattr(moe, "is_lora_enabled", False):
        raise AwqGemmConfigError(
            f"{name}: LoRA on mixture-of-experts layers needs one of vLLM's modular MoE "
            "kernels, and awqgemm's MoE op is not one: vLLM wraps every MoE layer when "
            "LoRA is enabled. Serve this model with vLLM's own AWQ for LoRA "
            f"(drop '--quantization {CANONICAL_NAME}'), or without --enable-lora."
        )
    if getattr(moe, "tp_shard_with_padding", False):
        raise AwqGemmConfigError(
            f"{name}: vLLM pads this layer's tensor-parallel shards (block-aligned TP), "
            "which AWQ's packed zero points cannot express. Use a tensor-parallel size "
            "that divides the intermediate size."
        )
    parallel = getattr(moe, "moe_parallel_config", None)
    for attr, what in (("use_all2all_kernels", "all-to-all expert-parallel kernels"),):
        if getattr(parallel, attr, False):
            raise AwqGemmConfigError(
                f"{name}: {what} ({getattr(parallel, 'all2all_backend', '?')}) are vLLM "
                "modular kernels awqgemm does not plug into. Use expert parallelism "
                "without data parallelism, or serve with vLLM's own AWQ."
            )


def _is_checkpoint_layout(layer: torch.nn.Module) -> bool:
    return "w13_scales" in layer._parameters


def _fused_moe_method_base() -> type:
    from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase

    return FusedMoEMethodBase


class AwqGemmMoEMethod(_fused_moe_method_base()):  # type: ignore[misc]
    """AWQ experts: loads the per-expert checkpoint tensors, repacks them with
    ``awqgemm.pack_awq_experts`` and runs every forward as one
    ``awqgemm.fused_moe`` call on vLLM's routing.

    Weight reloads put the checkpoint-layout parameters back and call
    :meth:`process_weights_after_loading` again, which repacks whenever it finds
    them (as the dense method does).  The forward builds its packed weights from
    the layer's *current* parameters.
    """

    def __init__(self, quant_config: AwqGemmConfig, moe: Any, prefix: str = "") -> None:
        super().__init__(moe)
        self.quant_config = quant_config
        self.prefix = prefix
        self.interface = moe_interface()
        if self.interface == "unknown":
            import vllm

            raise AwqGemmConfigError(
                f"{prefix or '<MoE layer>'}: awqgemm does not know the MoE method interface of "
                f"vLLM {getattr(vllm, '__version__', '?')} (FusedMoEMethodBase.apply takes "
                f"{_base_apply_parameters()}). Serve this model with vLLM's own AWQ "
                f"(drop '--quantization {CANONICAL_NAME}') or use a vLLM awqgemm-vllm supports."
            )
        if not library_has_moe():
            raise library_moe_error(prefix)
        check_moe_layer_options(prefix, moe)

    # ---- weights ------------------------------------------------------------

    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        from vllm.model_executor.utils import set_weight_attrs

        group = self.quant_config.group_size
        check_act_dtype(str(params_dtype).removeprefix("torch."), _platform.current())
        check_moe_shard(
            self.prefix,
            hidden_size,
            intermediate_size_per_partition,
            getattr(self.moe, "intermediate_size", None),
            group,
        )
        self.quant_config.check_serving_options(self.prefix)
        attrs = dict(extra_weight_attrs)
        # only what the expert weight loader reads (its **extra also carries
        # sizes meant for other methods)
        attrs = {k: v for k, v in attrs.items() if k == "weight_loader"}
        attrs.update(is_transposed=True, quant_method=_group_scale_kind())
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition

        def add(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
            param = torch.nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)
            layer.register_parameter(name, param)
            set_weight_attrs(param, attrs)

        # w13: K = hidden, N = 2 * intermediate (gate columns, then up columns);
        # w2: K = intermediate, N = hidden. AWQ packs 8 columns per int32.
        add("w13_qweight", (e, h, 2 * i // PACK_FACTOR), torch.int32)
        add("w13_qzeros", (e, h // group, 2 * i // PACK_FACTOR), torch.int32)
        add("w13_scales", (e, h // group, 2 * i), params_dtype)
        add("w2_qweight", (e, i, h // PACK_FACTOR), torch.int32)
        add("w2_qzeros", (e, i // group, h // PACK_FACTOR), torch.int32)
        add("w2_scales", (e, i // group, h), params_dtype)
        setattr(layer, SHAPE_ATTR, (e, h, i, group))

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if not _is_checkpoint_layout(layer):
            # already repacked and nothing reloaded since (a repeated call)
            self._check_packed(layer)
            return
        group = self.quant_config.group_size
        packed = {}
        for stem in ("w13", "w2"):
            qzeros = getattr(layer, f"{stem}_qzeros").data
            if not self.quant_config.zero_point:
                # symmetric AWQ: every zero is 8; the checkpoint's qzeros are not used
                qzeros = torch.full_like(qzeros, SYMMETRIC_ZEROS_WORD)
            packed[stem] = awqgemm.pack_awq_experts(
                getattr(layer, f"{stem}_qweight").data,
                qzeros,
                getattr(layer, f"{stem}_scales").data,
                group,
            )
            del qzeros
            # free this projection's checkpoint tensors before packing the next
            for name in (f"{stem}_qweight", f"{stem}_qzeros", f"{stem}_scales"):
                delattr(layer, name)
        for stem, (qname, sname) in (
            ("w13", (PACKED_W13_QWEIGHT, PACKED_W13_SCALES)),
            ("w2", (PACKED_W2_QWEIGHT, PACKED_W2_SCALES)),
        ):
            layer.register_parameter(qname, torch.nn.Parameter(packed[stem].qweight, requires_grad=False))
            layer.register_parameter(sname, torch.nn.Parameter(packed[stem].scales, requires_grad=False))
        if packed["w13"].layout != packed["w2"].layout:
            raise AwqGemmConfigError(
                f"{self.prefix}: awqgemm packed w13 and w2 in different layouts "
                f"({packed['w13'].layout} vs {packed['w2'].layout})."
            )
        self._check_packed(layer, packed["w13"].layout)

    def _check_packed(self, layer: torch.nn.Module, layout: int | None = None) -> None:
        e = getattr(layer, SHAPE_ATTR)[0]
        tensors = {name: getattr(layer, name, None) for name in PACKED_PARAMS}
        missing = [n for n, t in tensors.items() if t is None]
        if missing:
            raise AwqGemmConfigError(f"{self.prefix}: the packed expert weights {missing} are missing.")
        for name, t in tensors.items():
            if t.shape[0] != e:
                raise AwqGemmConfigError(f"{self.prefix}: {name} holds {t.shape[0]} experts; this rank serves {e}.")
        if layout is None:
            layout = getattr(layer, LAYOUT_ATTR, None)
        if layout is None:
            scales = tensors[PACKED_W13_SCALES]
            layout = awqgemm._ops.layout_for_device(scales.device, scales.dtype)
        setattr(layer, LAYOUT_ATTR, layout)

    def packed_weights(self, layer: torch.nn.Module) -> tuple[Any, Any]:
        """The layer's (w13, w2) as ``awqgemm.PackedWeight`` of stacked experts."""
        e, h, i, group = getattr(layer, SHAPE_ATTR)
        layout = getattr(layer, LAYOUT_ATTR)
        w13 = awqgemm.PackedWeight(
            getattr(layer, PACKED_W13_QWEIGHT),
            getattr(layer, PACKED_W13_SCALES),
            h,
            2 * i,
            group,
            layout,
            e,
        )
        w2 = awqgemm.PackedWeight(
            getattr(layer, PACKED_W2_QWEIGHT),
            getattr(layer, PACKED_W2_SCALES),
            i,
            h,
            group,
            layout,
            e,
        )
        return w13, w2

    def get_fused_moe_quant_config(self, layer: torch.nn.Module) -> None:
        # awqgemm.fused_moe is not one of vLLM's modular kernels: nothing to
        # configure there (vLLM then routes, dispatches and reduces itself).
        return None

    # ---- forward ------------------------------------------------------------

    def _experts(self, layer: torch.nn.Module, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor):
        w13, w2 = self.packed_weights(layer)
        return awqgemm.fused_moe(
            x,
            w13,
            w2,
            topk_weights,
            topk_ids,
            activation=SUPPORTED_ACTIVATION,
            apply_router_weight_on_input=bool(getattr(layer, "apply_router_weight_on_input", False)),
            expert_map=getattr(layer, "expert_map", None),
        )

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Both interfaces vLLM has had (see :func:`moe_interface`): the routed
        one ``apply(layer, x, topk_weights, topk_ids, [shared_experts,]
        shared_experts_input)``, and the older ``apply(layer, x, router_logits,
        ...)`` where the method routes through the layer's ``select_experts``."""
        if self.interface == "routed":
            topk_weights, topk_ids = _take(args, kwargs, ("topk_weights", "topk_ids"))
            # shared experts: vLLM's runner computes them itself for a method
            # without a modular kernel (this one); nothing to do here.
            return self._experts(layer, x, topk_weights, topk_ids)
        (router_logits,) = _take(args, kwargs, ("router_logits",))
        act = _activation_name(kwargs.get("activation", SUPPORTED_ACTIVATION))
        if act != SUPPORTED_ACTIVATION:
            raise AwqGemmConfigError(
                f"{self.prefix}: awqgemm's MoE path computes SiLU(gate) * up experts; this "
                f"layer's activation is {act!r}. Serve this model with vLLM's own AWQ."
            )
        topk_weights, topk_ids = select_experts_legacy(layer, x, router_logits, kwargs)
        return self._experts(layer, x, topk_weights, topk_ids)


def _take(args: tuple, kwargs: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    out = []
    for j, name in enumerate(names):
        if name in kwargs:
            out.append(kwargs[name])
        elif j < len(args):
            out.append(args[j])
        else:
            raise TypeError(f"awqgemm MoE apply: vLLM did not pass {name!r}")
    return out


def select_experts_legacy(
    layer: torch.nn.Module, x: torch.Tensor, router_logits: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing for vLLM releases whose MoE ``apply`` gets router logits: through
    the layer's ``select_experts`` (a method taking ``hidden_states`` and
    ``router_logits`` in later releases, a static function taking every routing
    option in earlier ones: those are given from ``apply``'s keywords and the
    layer's attributes)."""
    select = getattr(layer, "select_experts", None)
    if select is None:
        raise AwqGemmConfigError(
            "awqgemm's MoE method was called with router logits, but this vLLM's MoE layer "
            "has no select_experts to route them."
        )
    params = inspect.signature(select).parameters
    given: dict[str, Any] = {"hidden_states": x, "router_logits": router_logits}
    for name in params:
        if name in given or name in ("self", "args", "kwargs"):
            continue
        if name in kwargs:
            given[name] = kwargs[name]
        elif hasattr(layer, name):
            given[name] = getattr(layer, name)
    out = select(**{k: v for k, v in given.items() if k in params})
    # some releases return (weights, ids, zero_expert_num, zero_expert_type)
    return out[0], out[1]


def _group_scale_kind() -> str:
    """The loader's tag for group-wise scales/zeros ("group"), from vLLM."""
    try:
        from vllm.model_executor.layers.fused_moe import FusedMoeWeightScaleSupported
    except ImportError:  # pragma: no cover - older vLLM keeps it in layer.py
        from vllm.model_executor.layers.fused_moe.layer import FusedMoeWeightScaleSupported
    return FusedMoeWeightScaleSupported.GROUP.value
