"""Layers of gevit: group self-attention and its transformer block, and the small layers shared by several
networks (:mod:`gevit.layers.common`)."""

from gevit.layers.blocks import ChannelLinear, Crop, GroupTransformerBlock
from gevit.layers.common import ChannelLayerNorm, per_item
from gevit.layers.group_attention import GroupSelfAttention, LiftingSelfAttention, PositionMLP

__all__ = [
    "ChannelLayerNorm",
    "ChannelLinear",
    "Crop",
    "GroupTransformerBlock",
    "GroupSelfAttention",
    "LiftingSelfAttention",
    "PositionMLP",
    "per_item",
]
