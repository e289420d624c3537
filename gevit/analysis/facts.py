"""What a network is, read from the objects themselves (isinstance and attributes), in one place.

Figures and scripts ask :func:`model_facts` instead of parsing class or config names: the family (GE-ViT
or GSA-Nets from the attention layers' ``encoding``), the symmetry group, which attention maps it can
return, and whether its post-hoc aggregator weighs the views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from gevit.groups import Group
from gevit.models.group_transformer import GroupTransformer
from gevit.models.hybrid import HybridViT
from gevit.models.vit import VisionTransformer
from gevit.posthoc.wrapper import PostHocInvariant


@dataclass(frozen=True)
class ModelFacts:
    """Facts about a network.

    ``kind``: ``gevit`` (a :class:`GroupTransformer`, GE-ViT or GSA-Nets), ``vit``
    (:class:`VisionTransformer`), ``posthoc`` (:class:`PostHocInvariant`), ``hybrid`` (:class:`HybridViT`)
    or ``other``. ``name``: a short label (``GE-ViT``, ``GSA-Nets``, ``ViT``, ``post-hoc lambda``, ...);
    ``description``: one line for figure titles. ``group``: the group it is equivariant/invariant to, if
    any. ``attention``: ``group`` (pixel-level group attention maps of a GroupTransformer), ``tokens``
    (a ViT's token attention) or None. ``view_weights``: a post-hoc aggregator with per-view weights
    (``aggregator.weights(embeddings)``).
    """

    kind: str
    name: str
    description: str
    group: Optional[Group] = None
    attention: Optional[str] = None
    view_weights: bool = False


def attention_window(layer: nn.Module) -> Optional[int]:
    """Side k of a group attention layer's (``gevit.layers.group_attention``) k x k neighbourhood, or None for
    global attention."""
    if layer.is_global:
        return None
    return int(getattr(layer, "attention_window", None) or layer.patch_size)


def aggregator_weighs_views(aggregator: nn.Module) -> bool:
    """Whether a post-hoc aggregator gives per-view weights ``weights(embeddings (B, |G|, D)) -> (B, |G|)``:
    its class says so (``weighted_views``); classes that do not say, by having the method."""
    return bool(getattr(type(aggregator), "weighted_views", callable(getattr(aggregator, "weights", None))))


def _group_transformer_name(net: GroupTransformer) -> str:
    return net.attention_layers()[0].encoding.family


def _reach(net: GroupTransformer) -> str:
    window = attention_window(net.attention_layers()[0])
    return "global" if window is None else f"{window}x{window} local"


def model_facts(net: nn.Module) -> ModelFacts:
    """The :class:`ModelFacts` of ``net`` (a bare network, not a LightningModule)."""
    if isinstance(net, GroupTransformer):
        name = _group_transformer_name(net)
        return ModelFacts("gevit", name, f"{name} {net.group.name}, {_reach(net)} attention", net.group, "group")
    if isinstance(net, VisionTransformer):
        patch = net.patch_embed.patch_size
        return ModelFacts(
            "vit",
            "ViT",
            f"ViT, {len(net.blocks)} blocks, {net.embed_dim}-d, {patch}x{patch} patches",
            attention="tokens",
        )
    if isinstance(net, PostHocInvariant):
        aggregator = net.aggregator
        backbone = type(getattr(net.backbone, "model", net.backbone)).__name__
        return ModelFacts(
            "posthoc",
            f"post-hoc {aggregator.name}",
            f"post-hoc {aggregator.name} over {net.group.name} on {backbone}",
            net.group,
            view_weights=aggregator_weighs_views(aggregator),
        )
    if isinstance(net, HybridViT):
        inner = net.vit
        return ModelFacts(
            "hybrid",
            f"hybrid {_group_transformer_name(inner)}",
            f"hybrid: {net.stem_kind} stem -> {_group_transformer_name(inner)} {inner.group.name}, "
            f"{_reach(inner)} attention on {net.artificial_size}x{net.artificial_size}",
            inner.group,
        )
    group = getattr(net, "group", None)
    return ModelFacts("other", type(net).__name__, type(net).__name__, group if isinstance(group, Group) else None)
