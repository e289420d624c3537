"""Small layers and helpers shared by several networks (one home each)."""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F


def per_item(values: Union[int, Sequence[int]], count: int, name: str) -> list[int]:
    """One value per layer / stage / block: an int is repeated ``count`` times, a sequence must have
    ``count`` entries (``ValueError`` naming the option ``name`` otherwise)."""
    if isinstance(values, int):
        return [values] * count
    values = [int(v) for v in values]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries, expected {count}")
    return values


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each position: (B, C, H, W) -> (B, C, H, W).

    A pointwise map (the same at every position), so it commutes with any permutation of the positions:
    rotations and mirrors of the grid keep an invariant or equivariant map so.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The hybrid's earlier copy of this layer held an nn.LayerNorm called ``norm``: accept its keys.
        for name in ("weight", "bias"):
            old = f"{prefix}norm.{name}"
            if old in state_dict and prefix + name not in state_dict:
                state_dict[prefix + name] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"
