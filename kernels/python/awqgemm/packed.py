"""The packed weight container."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedWeight:
    """A weight repacked for awqgemm's kernels (see ``awqgemm._layout``).

    ``qweight`` (int32) and ``scales`` (the fused (scale, zero) pairs, in the
    activation dtype) are plain tensors, so a module can register them as
    parameters or buffers and they travel with ``state_dict``; the ints describe
    the logical problem. Build one with :func:`awqgemm.pack_awq`.

    Stacked MoE experts (:func:`awqgemm.pack_awq_experts`) carry a leading
    expert dimension on both tensors and ``num_experts`` set; ``K``/``N`` are
    one expert's. A dense layer has ``num_experts = None``.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    K: int
    N: int
    group_size: int
    layout: int
    num_experts: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def to(self, device: torch.device | str) -> PackedWeight:
        """The same weight on another device (the layout does not change)."""
        return PackedWeight(
            self.qweight.to(device),
            self.scales.to(device),
            self.K,
            self.N,
            self.group_size,
            self.layout,
            self.num_experts,
        )
