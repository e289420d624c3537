"""Building blocks of the group transformer, acting on (B, C, |G|, H, W) feature maps.

Every block here commutes with the group action (permutations of the group axis and exact 90-degree
rotations / flips of space): normalisations pool over whole maps or per channel, 1x1 maps act per
position, crops are symmetric.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from gevit.layers.group_attention import GroupSelfAttention, Swish

NORMS = ("layer", "batch")
ACTIVATIONS = ("swish", "relu")


class ChannelLinear(nn.Linear):
    """A 1x1(x1) convolution: a Linear map over dim 1 of (B, C, ...)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``layer``: normalise each sample over all of (C, |G|, H, W) with a per-channel affine
    (GroupNorm with one group, eps 1e-12, as in the original); ``batch``: BatchNorm3d."""
    if kind == "layer":
        return nn.GroupNorm(1, channels, eps=1e-12)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def make_activation(kind: str) -> nn.Module:
    if kind == "swish":
        return Swish()
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {kind!r}")


class Crop(nn.Module):
    """Remove ``size`` pixels from each side of the last two dims."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return x
        s = self.size
        return x[..., s : x.shape[-2] - s, s : x.shape[-1] - s]


class GroupTransformerBlock(nn.Module):
    """``out = crop(attn_branch(x)) + crop(shortcut(x)); out = out + mlp(out)`` with

    attn_branch = Norm -> Act -> GroupSelfAttention -> Norm -> Act -> Dropout(value_dropout)
    mlp = 1x1 (C -> C/2) -> Norm -> Act -> 1x1 (C/2 -> C) -> Norm

    (the original's layout: pre-activation attention and a bottleneck MLP). The shortcut is a 1x1 map
    when the channel count changes. (B, C_in, |G|, S, S) -> (B, C_out, |G|, S - 2 crop, S - 2 crop).
    ``attention_window``: the odd side k of the k x k neighbourhood each query attends to (None: global).
    ``head_channels``: query/key/value channels per head (None: ``out_channels // 2``, the original's).
    """

    def __init__(
        self,
        group,
        in_channels: int,
        out_channels: int,
        num_heads: int,
        attention_window: Optional[int],
        image_size: int,
        crop: int = 0,
        norm: str = "layer",
        activation: str = "swish",
        attention_dropout: float = 0.0,
        value_dropout: float = 0.0,
        encoding: str = "gevit",
        head_channels: Optional[int] = None,
    ):
        super().__init__()
        self.attention = GroupSelfAttention(
            group,
            in_channels,
            out_channels // 2 if head_channels is None else head_channels,
            out_channels,
            num_heads,
            attention_window,
            image_size,
            attention_dropout,
            encoding,
        )
        self.pre_norm = make_norm(norm, in_channels)
        self.pre_act = make_activation(activation)
        self.post_norm = make_norm(norm, out_channels)
        self.post_act = make_activation(activation)
        self.value_dropout = nn.Dropout(value_dropout)
        self.mlp = nn.Sequential(
            ChannelLinear(out_channels, out_channels // 2),
            make_norm(norm, out_channels // 2),
            make_activation(activation),
            ChannelLinear(out_channels // 2, out_channels),
            make_norm(norm, out_channels),
        )
        self.shortcut = ChannelLinear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()
        self.crop = Crop(crop)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        attended = self.attention(self.pre_act(self.pre_norm(x)), return_attention=return_attention)
        probs = None
        if return_attention:
            attended, probs = attended
        branch = self.value_dropout(self.post_act(self.post_norm(attended)))
        out = self.crop(branch) + self.crop(self.shortcut(x))
        out = out + self.mlp(out)
        return (out, probs) if return_attention else out
