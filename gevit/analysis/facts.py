"""What a network is, as its class states it, read in one place.

Figures and scripts ask :func:`model_facts` instead of parsing class or config names. Each network class
states its own facts, so a new model family is its module (and its yaml) with nothing to change here:

- class attributes ``model_kind`` (the family: ``gevit``, ``vit``, ``posthoc``, ``hybrid``, ...) and
  ``attention_maps`` (``group``, ``tokens`` or None: which attention maps the network can return);
- ``model_name`` and ``description``: a short label and one line for figure titles (attributes or
  properties, e.g. GE-ViT or GSA-Nets from the attention layers' encoding);
- ``group``: the :class:`~gevit.groups.Group` it is equivariant/invariant to, if any;
- ``weighs_views``: a post-hoc aggregator with per-view weights (absent: False).

A network that states no ``model_kind`` is of kind ``other``, named by its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from gevit.groups import Group
from gevit.posthoc.aggregators.base import aggregator_weighs_views

__all__ = ["ModelFacts", "aggregator_weighs_views", "attention_window", "model_facts"]


@dataclass(frozen=True)
class ModelFacts:
    """Facts about a network.

    ``kind``: ``gevit`` (a GroupTransformer, GE-ViT or GSA-Nets), ``vit`` (VisionTransformer), ``posthoc``
    (PostHocInvariant), ``hybrid`` (HybridViT), another family's ``model_kind``, or ``other``. ``name``: a
    short label (``GE-ViT``, ``GSA-Nets``, ``ViT``, ``post-hoc lambda``, ...); ``description``: one line for
    figure titles. ``group``: the group it is equivariant/invariant to, if any. ``attention``: ``group``
    (pixel-level group attention maps of a GroupTransformer), ``tokens`` (a ViT's token attention) or None.
    ``view_weights``: a post-hoc aggregator with per-view weights (``aggregator.weights(embeddings)``).
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
    return layer.attention_window


def model_facts(net: nn.Module) -> ModelFacts:
    """The :class:`ModelFacts` of ``net`` (a bare network, not a LightningModule)."""
    group = getattr(net, "group", None)
    group = group if isinstance(group, Group) else None
    kind = getattr(type(net), "model_kind", None)
    if kind is None:
        return ModelFacts("other", type(net).__name__, type(net).__name__, group)
    return ModelFacts(
        kind,
        net.model_name,
        net.description,
        group,
        attention=getattr(type(net), "attention_maps", None),
        view_weights=bool(getattr(net, "weighs_views", False)),
    )
