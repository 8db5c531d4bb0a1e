"""Linear layers of AWQ checkpoints, computed by awqgemm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.linear import LinearMethodBase
from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter

from . import _platform
from ._awqgemm import awqgemm
from ._policy import (
    PACK_FACTOR,
    SYMMETRIC_ZEROS_WORD,
    AwqGemmConfigError,
    check_act_dtype,
    check_linear_shard,
)

if TYPE_CHECKING:
    from .config import AwqGemmConfig

#: Prefix of the layer parameters holding awqgemm's packed tensors.
PARAM_PREFIX = "awqgemm_"
#: The packed int4 weight (a parameter) and the fused scale/zero pairs.
PACKED_QWEIGHT = PARAM_PREFIX + "qweight"
PACKED_SCALES = PARAM_PREFIX + "scales"
#: Checkpoint-layout parameters, freed once repacked.
CHECKPOINT_PARAMS = ("qweight", "qzeros", "scales")
#: Name under which the packed weight is also reachable (a non-persistent
#: buffer aliasing ``awqgemm_qweight``): vLLM's LoRA wrapper and other
#: features find a quantized layer's device and weight through ``qweight``,
#: the name vLLM's own AWQ keeps.
QWEIGHT_ALIAS = "qweight"
#: Plain attribute with the problem's sizes (K, N, group size); set at weight
#: creation and kept through weight reloads.
SHAPE_ATTR = "awqgemm_shape"
#: Plain attribute with the packed layout (an ``awqgemm`` layout id).
LAYOUT_ATTR = "awqgemm_layout"


def _weights_pre_processed() -> bool:
    """vLLM's weight-cache IPC mode (``weights_already_processed``); vLLM
    releases without that loader never are in it."""
    try:
        from vllm.model_executor.utils import is_weights_pre_processed
    except ImportError:  # pragma: no cover - vLLM without the weight cache
        return False
    return bool(is_weights_pre_processed())


def _check_lm_head_shard(layer: Any, prefix: str, rows: int) -> None:
    """A quantized lm_head loads only where this rank's vocabulary shard is
    unpadded: vLLM's vocabulary loader copies packed shards row-wise."""
    indices = layer.shard_indices
    org = indices.org_vocab_end_index - indices.org_vocab_start_index
    if org != rows or layer.org_vocab_size != layer.num_embeddings:
        raise AwqGemmConfigError(
            f"{prefix}: a quantized lm_head (lm_head: true) needs an unpadded "
            f"vocabulary shard; this rank holds {org} of the vocabulary's "
            f"{layer.org_vocab_size} rows padded to {rows} (added tokens, or a "
            f"vocabulary not a multiple of {layer.padding_size} per rank). Use a "
            "tensor-parallel size that splits the vocabulary into multiples of "
            f"{layer.padding_size}, or a checkpoint with an unquantized lm_head."
        )


def _is_checkpoint_layout(layer: torch.nn.Module) -> bool:
    """The layer holds AWQ checkpoint tensors (fresh load, or a reload that put
    them back), as opposed to awqgemm's packed ones."""
    return "scales" in layer._parameters


class AwqGemmLinearMethod(LinearMethodBase):
    """AWQ linear layer: loads the checkpoint layout, repacks it with
    ``awqgemm.pack_awq`` and runs every forward as one ``awqgemm.gemm`` call.

    Weight reloads (``reload_weights``, RL weight sync, sleep level 2) put the
    checkpoint-layout parameters back and call :meth:`process_weights_after_loading`
    again: it repacks every time it finds them.  The forward builds its
    ``awqgemm.PackedWeight`` from the layer's *current* parameters, so it follows
    vLLM when it swaps the original storage back in after a reload.
    """

    #: The weight-cache IPC loader hands over the packed tensors themselves.
    supports_pre_processed_weights = True

    def __init__(self, quant_config: AwqGemmConfig, prefix: str = "") -> None:
        self.quant_config = quant_config
        self.prefix = prefix

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        group = self.quant_config.group_size
        check_act_dtype(str(params_dtype).removeprefix("torch."), _platform.current())
        check_linear_shard(
            self.prefix,
            input_size,
            input_size_per_partition,
            output_size,
            output_partition_sizes,
            group,
        )
        self.quant_config.check_serving_options(self.prefix)
        if hasattr(layer, "shard_indices"):  # a quantized lm_head (ParallelLMHead)
            _check_lm_head_shard(layer, self.prefix, output_partition_sizes[0])
        n_part = sum(output_partition_sizes)
        num_groups = input_size_per_partition // group
        weight_loader = extra_weight_attrs.get("weight_loader")

        def packed_int4(rows: int) -> PackedvLLMParameter:
            # 8 int4 values per int32 along the output dim, as AWQ stores them.
            return PackedvLLMParameter(
                data=torch.empty(rows, n_part // PACK_FACTOR, dtype=torch.int32),
                input_dim=0,
                output_dim=1,
                packed_dim=1,
                packed_factor=PACK_FACTOR,
                weight_loader=weight_loader,
            )

        # qzeros is created for zero_point: false too (AutoAWQ writes it and
        # vLLM's own AWQ loads it), but then its values are not used.
        layer.register_parameter("qweight", packed_int4(input_size_per_partition))
        layer.register_parameter("qzeros", packed_int4(num_groups))
        layer.register_parameter(
            "scales",
            GroupQuantScaleParameter(
                data=torch.empty(num_groups, n_part, dtype=params_dtype),
                input_dim=0,
                output_dim=1,
                weight_loader=weight_loader,
            ),
        )
        setattr(layer, SHAPE_ATTR, (input_size_per_partition, n_part, group))

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if _weights_pre_processed():
            # Weight-cache IPC loader: the packed tensors were registered on
            # the layer as exported; drop what create_weights left on meta.
            self._adopt_packed(layer)
            return
        if not _is_checkpoint_layout(layer):
            # Already repacked and nothing reloaded since (a repeated call).
            self._check_packed(layer)
            return
        qzeros = layer.qzeros.data
        if not self.quant_config.zero_point:
            # Symmetric AWQ: every zero is 8 (as vLLM's AWQ kernels take it);
            # the checkpoint's qzeros are not used.
            qzeros = torch.full_like(qzeros, SYMMETRIC_ZEROS_WORD)
        packed = awqgemm.pack_awq(
            layer.qweight.data,
            qzeros,
            layer.scales.data,
            self.quant_config.group_size,
        )
        # Free the checkpoint-layout tensors now, so that loading needs at most
        # one layer's temporaries on top of the repacked model.
        del qzeros
        for name in CHECKPOINT_PARAMS:
            delattr(layer, name)
        # The packed tensors become parameters of the layer, so vLLM moves,
        # counts, reloads and shares them like any weight.
        layer.register_parameter(PACKED_QWEIGHT, torch.nn.Parameter(packed.qweight, requires_grad=False))
        layer.register_parameter(PACKED_SCALES, torch.nn.Parameter(packed.scales, requires_grad=False))
        self._register_alias(layer)
        self._check_packed(layer, packed.layout)

    def _register_alias(self, layer: torch.nn.Module) -> None:
        layer.register_buffer(QWEIGHT_ALIAS, getattr(layer, PACKED_QWEIGHT), persistent=False)

    def _adopt_packed(self, layer: torch.nn.Module) -> None:
        for name in (PACKED_QWEIGHT, PACKED_SCALES):
            tensor = layer._parameters.get(name)
            if tensor is None or tensor.is_meta:
                raise AwqGemmConfigError(
                    f"{self.prefix}: the pre-processed weights have no '{name}'; "
                    "they were not exported from an awqgemm layer."
                )
        for name in CHECKPOINT_PARAMS:
            if name in layer._parameters or name in layer._buffers:
                delattr(layer, name)
        self._register_alias(layer)
        self._check_packed(layer)

    def _check_packed(self, layer: torch.nn.Module, layout: int | None = None) -> None:
        """The packed tensors on the layer fit this layer; records their layout."""
        qweight = getattr(layer, PACKED_QWEIGHT)
        scales = getattr(layer, PACKED_SCALES)
        if qweight.dtype != torch.int32 or qweight.device != scales.device:
            raise AwqGemmConfigError(
                f"{self.prefix}: the packed weight is {qweight.dtype} on {qweight.device} "
                f"and its scales are on {scales.device}; expected int32 on the scales' "
                "device."
            )
        if layout is None:
            layout = getattr(layer, LAYOUT_ATTR, None)
        if layout is None:
            # Weights packed elsewhere (weight-cache IPC): the layout the
            # kernels of this device read, as pack_awq would have chosen it.
            layout = awqgemm._ops.layout_for_device(scales.device, scales.dtype)
        setattr(layer, LAYOUT_ATTR, layout)

    def tie_weights(self, layer: torch.nn.Module, embed_tokens: torch.nn.Module) -> Any:
        raise AwqGemmConfigError(
            f"{self.prefix}: this checkpoint quantizes lm_head (lm_head: true) but ties "
            "it to the input embeddings (tie_word_embeddings: true); a quantized "
            "lm_head needs its own weights. Use a checkpoint with an unquantized or "
            "untied lm_head."
        )

    def apply(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        k, n, group = getattr(layer, SHAPE_ATTR)
        packed = awqgemm.PackedWeight(
            getattr(layer, PACKED_QWEIGHT),
            getattr(layer, PACKED_SCALES),
            k,
            n,
            group,
            getattr(layer, LAYOUT_ATTR),
        )
        return awqgemm.gemm(x, packed, bias)
