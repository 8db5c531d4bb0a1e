"""Linear layers of AWQ checkpoints, computed by awqgemm."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from vllm.model_executor.layers.linear import LinearMethodBase
from vllm.model_executor.parameter import GroupQuantScaleParameter, PackedvLLMParameter

from . import _platform
from ._awqgemm import awqgemm
from ._policy import PACK_FACTOR, check_act_dtype, check_linear_shard

if TYPE_CHECKING:
    from .config import AwqGemmConfig

#: Attribute of the layer holding the awqgemm.PackedWeight after loading.
PACKED_ATTR = "awqgemm_packed"
#: Prefix of the layer parameters holding PackedWeight's tensors.
PARAM_PREFIX = "awqgemm_"
#: Checkpoint-layout parameters, freed once repacked.
CHECKPOINT_PARAMS = ("qweight", "qzeros", "scales")


class AwqGemmLinearMethod(LinearMethodBase):
    """AWQ linear layer: loads the checkpoint layout, repacks it once with
    ``awqgemm.pack_awq`` and runs every forward as one ``awqgemm.gemm`` call."""

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

        qweight = packed_int4(input_size_per_partition)
        qzeros = packed_int4(num_groups)
        scales = GroupQuantScaleParameter(
            data=torch.empty(num_groups, n_part, dtype=params_dtype),
            input_dim=0,
            output_dim=1,
            weight_loader=weight_loader,
        )
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scales)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if hasattr(layer, PACKED_ATTR):  # already repacked (e.g. a second call)
            return
        packed = awqgemm.pack_awq(
            layer.qweight.data,
            layer.qzeros.data,
            layer.scales.data,
            self.quant_config.group_size,
        )
        # Free the checkpoint-layout tensors now, so that loading needs at most
        # one layer's temporaries on top of the repacked model.
        for name in CHECKPOINT_PARAMS:
            delattr(layer, name)
        # The packed tensors become parameters of the layer (so vLLM moves,
        # counts and offloads them like any weight) and PackedWeight refers to
        # those very Parameter objects.
        updates: dict[str, torch.nn.Parameter] = {}
        for f in dataclasses.fields(packed):
            value = getattr(packed, f.name)
            if isinstance(value, torch.Tensor):
                param = torch.nn.Parameter(value, requires_grad=False)
                layer.register_parameter(PARAM_PREFIX + f.name, param)
                updates[f.name] = param
        packed = dataclasses.replace(packed, **updates)
        setattr(layer, PACKED_ATTR, packed)

    def apply(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return awqgemm.gemm(x, getattr(layer, PACKED_ATTR), bias)
