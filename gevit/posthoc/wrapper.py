"""PostHocInvariant: make any backbone classifier invariant to a group of input transformations.

One forward:

1. the |G| views ``g_i . x`` of every image (:class:`~gevit.posthoc.views.GroupViews`): (B, C, H, W) ->
   (B·|G|, C, H, W);
2. **one** backbone call on the B·|G| views -> features; embeddings (B, |G|, D) from the backbone's
   pooling / class-token read-out;
3. an invariant aggregator (:mod:`gevit.posthoc.aggregators`) over the views — of the embeddings (then
   the backbone's head), of the per-view logits, or of the spatial feature maps after ``g_i^-1`` is
   applied to view ``i`` (then the backbone's pooling and head) -> logits (B, K).

Transforming the input by a group element permutes its views, and every aggregator is invariant to
permutations of the views, so the logits are invariant: exactly for C4 / flip / D4, whose elements are
pixel permutations, and up to interpolation for C8 / C16.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from gevit.groups import Group
from gevit.posthoc.aggregators import Aggregator, build_aggregator
from gevit.posthoc.backbones import Backbone
from gevit.posthoc.views import GroupViews

REGIMES = ("zero_shot", "aggregator_only", "mlp", "full")


class PostHocInvariant(nn.Module):
    """``forward(images (B, C, H, W)) -> logits (B, K)``, invariant to ``group`` acting on the images.

    Args:
        backbone: a :class:`~gevit.posthoc.backbones.Backbone` (see :func:`~gevit.posthoc.build_backbone`).
        group: group name or :class:`~gevit.groups.Group` (``c4``, ``flip``, ``d4``, ``c8``, ``c16`` ...).
        aggregator: an :class:`~gevit.posthoc.aggregators.Aggregator` or the name of one (default options).
        interpolation, padding, background: how the views are made (:class:`GroupViews`).
    """

    def __init__(self, backbone: Backbone, group: Group | str, aggregator: Aggregator | str = "mean",
                 interpolation: str = "bilinear", padding: str = "zeros",
                 background: Optional[Sequence[float] | torch.Tensor] = None):
        super().__init__()
        if isinstance(aggregator, str):
            aggregator = build_aggregator(aggregator, backbone.embed_dim, backbone.spatial_features)
        if aggregator.level == "spatial" and not backbone.spatial_features:
            raise ValueError(f"the {aggregator.name} aggregator combines spatial feature maps, which this backbone "
                             "does not have")
        self.views = GroupViews(group, interpolation=interpolation, padding=padding, background=background)
        self.backbone = backbone
        self.aggregator = aggregator

    @property
    def group(self) -> Group:
        return self.views.group

    def view_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (features (B, |G|, ...), embeddings (B, |G|, D)) with one backbone call."""
        b, g = images.shape[0], self.views.order
        features = self.backbone.forward_features(self.views(images).flatten(0, 1))
        embeddings = self.backbone.forward_head(features, pre_logits=True)
        return features.unflatten(0, (b, g)), embeddings.unflatten(0, (b, g))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, embeddings = self.view_features(images)
        level = self.aggregator.level
        if level == "embedding":
            return self.backbone.head(self.aggregator(embeddings))
        if level == "logits":
            return self.aggregator(self.backbone.head(embeddings))
        aligned = self.views.inverse_on_maps(features)
        combined = self.aggregator(embeddings, values=aligned)
        return self.backbone.forward_head(combined)

    # ---- regimes -----------------------------------------------------------------------------------
    def trainable_modules(self, regime: str) -> list[nn.Module]:
        """The parts a regime trains: ``zero_shot`` nothing, ``aggregator_only`` the aggregator (λ-equitune's
        pre-finetune), ``mlp`` the backbone's head and the aggregator, ``full`` everything.

        Refuses combinations that make no sense: a learned aggregator without training it, or
        ``aggregator_only`` with an aggregator that has no parameters.
        """
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
        learned = self.aggregator.learned
        name = self.aggregator.name
        if regime == "zero_shot" and learned:
            count = sum(p.numel() for p in self.aggregator.parameters())
            raise ValueError(f"the {name} aggregator has {count:,} parameters that must be trained, but "
                             "regime=zero_shot trains nothing: use model.regime=aggregator_only to train the "
                             "aggregator alone (the backbone stays frozen), or mlp / full")
        if regime == "aggregator_only" and not learned:
            raise ValueError(f"regime=aggregator_only trains only the aggregator, but {name} has no parameters: "
                             "use model.regime=zero_shot")
        return {"zero_shot": [], "aggregator_only": [self.aggregator],
                "mlp": [self.backbone.head, self.aggregator], "full": [self]}[regime]
