"""Layers of the group transformer: lifting / group self-attention and the transformer block."""
from gevit.layers.blocks import ChannelLinear, Crop, GroupTransformerBlock
from gevit.layers.group_attention import GroupSelfAttention, LiftingSelfAttention, PositionMLP

__all__ = ["ChannelLinear", "Crop", "GroupTransformerBlock", "GroupSelfAttention", "LiftingSelfAttention",
           "PositionMLP"]
