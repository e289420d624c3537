"""PostHocInvariant: make any backbone classifier invariant to a group of input transformations.

One forward:

1. the |G| views ``g_i . x`` of every image (:class:`~gevit.posthoc.views.GroupViews`): (B, C, H, W) ->
   (B·|G|, C, H, W);
2. **one** backbone call on the B·|G| views -> features; embeddings (B, |G|, D) from the backbone's
   pooling / class-token read-out;
3. an invariant aggregator (:mod:`gevit.posthoc.aggregators`) over the views — of the embeddings (then
   the backbone's head), of the per-view logits, or of the spatial feature maps after ``g_i^-1`` is
   applied to view ``i`` (then an invariant pooling and the head) -> logits (B, K).

Transforming the input by a group element permutes its views, and every aggregator is invariant to
permutations of the views, so the logits are invariant: exactly for C4 / flip / D4, whose elements are
pixel permutations, and up to interpolation for C8 / C16.

A spatial aggregator gives a combined map that *rotates with* the input, so the read-out after it must be
invariant. The backbone's own pooling is used only where it is (``backbone.invariant_pooling``: global
average / max pooling); otherwise (attention pooling with a positional embedding, flattening, ...) the
read-out is symmetrised over the group: ``e = (1/|G|) sum_g P(g . F)`` with ``P`` the backbone's
pooling, in one batched call — invariant for any ``P``, and ``P`` itself where it already was.

Learned canonicalization (level ``input``) instead predicts an orientation ``h*`` and runs the backbone
once on ``h*^-1 . x`` (:class:`gevit.posthoc.canonicalization.Canonicalizer`).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
import torch.nn as nn

from gevit.groups import Group
from gevit.posthoc.aggregators.base import AggregatorFactory, aggregator_weighs_views, complete_aggregator
from gevit.posthoc.backbones import Backbone
from gevit.posthoc.views import GroupViews

log = logging.getLogger(__name__)

REGIMES = ("zero_shot", "aggregator_only", "mlp", "backbone_only", "full")
SPATIAL_POOLINGS = ("auto", "symmetrized", "backbone")


class PostHocInvariant(nn.Module):
    """``forward(images (B, C, H, W)) -> logits (B, K)``, invariant to ``group`` acting on the images.

    Args:
        backbone: a :class:`~gevit.posthoc.backbones.Backbone`.
        group: group name or :class:`~gevit.groups.Group` (``p4``, ``mz2``, ``p4m``, ``p8``, ``p16`` ...; aliases such as ``c4`` / ``d4`` too).
        aggregator: an :class:`~gevit.posthoc.aggregators.Aggregator`, or a class / partial completed with
            the facts ``embed_dim``, ``spatial_features``, ``group``, ``in_channels`` (default: mean).
        interpolation, padding, background: how the views are made (:class:`GroupViews`).
        spatial_pooling: the read-out after a spatial aggregator: ``auto`` (the backbone's pooling where it
            is invariant, else ``symmetrized``), ``symmetrized`` (mean over the group of the backbone's
            pooling of the transformed map) or ``backbone`` (the backbone's pooling as is — the original
            EquiAttention / equivariant λ-equitune; **not invariant** unless that pooling is; warns).
    """

    # What gevit.analysis.model_facts reads (with model_name, description, group and weighs_views below).
    model_kind = "posthoc"
    attention_maps = None

    def __init__(
        self,
        backbone: Backbone,
        group: Group | str,
        aggregator: Optional[AggregatorFactory] = None,
        interpolation: str = "bilinear",
        padding: str = "zeros",
        background: Optional[Sequence[float] | torch.Tensor] = None,
        spatial_pooling: str = "auto",
    ):
        super().__init__()
        if spatial_pooling not in SPATIAL_POOLINGS:
            raise ValueError(f"spatial_pooling must be one of {SPATIAL_POOLINGS}, got {spatial_pooling!r}")
        self.views = GroupViews(group, interpolation=interpolation, padding=padding, background=background)
        if aggregator is None:
            from gevit.posthoc.aggregators.mean import MeanAggregator

            aggregator = MeanAggregator
        aggregator = complete_aggregator(
            aggregator,
            embed_dim=backbone.embed_dim,
            spatial_features=backbone.spatial_features,
            group=self.views.group,
            in_channels=getattr(backbone, "in_channels", None),
        )
        if aggregator.level == "spatial" and not backbone.spatial_features:
            raise ValueError(
                f"the {aggregator.name} aggregator combines spatial feature maps, which this backbone does not have"
            )
        self.backbone = backbone
        self.aggregator = aggregator
        self.symmetrize_pooling = spatial_pooling == "symmetrized" or (
            spatial_pooling == "auto" and not backbone.invariant_pooling
        )
        if aggregator.level == "spatial" and spatial_pooling == "backbone" and not backbone.invariant_pooling:
            log.warning(
                "spatial_pooling=backbone with a pooling that is not known to be invariant (%s): the "
                "%s wrapper is NOT invariant; use spatial_pooling=auto",
                type(backbone.model).__name__,
                aggregator.name,
            )

    @property
    def group(self) -> Group:
        return self.views.group

    @property
    def model_name(self) -> str:
        return f"post-hoc {self.aggregator.name}"

    @property
    def description(self) -> str:
        backbone = type(getattr(self.backbone, "model", self.backbone)).__name__
        return f"{self.model_name} over {self.group.name} on {backbone}"

    @property
    def weighs_views(self) -> bool:
        """Whether the aggregator gives per-view weights (``aggregator.weights(embeddings)``)."""
        return aggregator_weighs_views(self.aggregator)

    def view_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (features (B, |G|, ...), embeddings (B, |G|, D)) with one backbone call."""
        b, g = images.shape[0], self.views.order
        features = self.backbone.forward_features(self.views(images).flatten(0, 1))
        embeddings = self.backbone.forward_head(features, pre_logits=True)
        return features.unflatten(0, (b, g)), embeddings.unflatten(0, (b, g))

    def orientation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """A discrete canonicalizer's orientation logits (B, |G|) of (B, C, H, W) images."""
        if not hasattr(self.aggregator, "orientation_logits"):
            raise ValueError(f"the {self.aggregator.name} aggregator predicts no orientation logits")
        return self.aggregator.orientation_logits(images, self.views)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Combined maps (B, C, h, w) -> logits (B, K) through an invariant read-out (see the module docstring)."""
        if not self.symmetrize_pooling:
            return self.backbone.forward_head(maps)
        orbit = self.group.orbit(maps, interpolation=self.views.interpolation)
        embeddings = self.backbone.forward_head(orbit.flatten(0, 1), pre_logits=True).unflatten(0, orbit.shape[:2])
        return self.backbone.head(embeddings.mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level = self.aggregator.level
        if level == "input":  # a canonicalizer: one canonical image per input, one backbone call
            return self.backbone(self.aggregator(images, self.views))
        features, embeddings = self.view_features(images)
        if level == "embedding":
            return self.backbone.head(self.aggregator(embeddings))
        if level == "logits":
            return self.aggregator(self.backbone.head(embeddings))
        aligned = self.views.inverse_on_maps(features)
        return self.pool(self.aggregator(embeddings, values=aligned))

    # ---- regimes -----------------------------------------------------------------------------------
    def trainable_modules(self, regime: str) -> list[nn.Module]:
        """The parts a regime trains: ``zero_shot`` nothing, ``aggregator_only`` the aggregator (λ-equitune's
        pre-finetune), ``mlp`` the backbone's classification head and the aggregator, ``backbone_only`` the
        backbone with the aggregator frozen (Basu et al.'s fine-tune phase), ``full`` everything.

        Refuses combinations that make no sense: a learned aggregator without training it, or
        ``aggregator_only`` / ``backbone_only`` with an aggregator that has no parameters.
        """
        if regime not in REGIMES:
            raise ValueError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
        learned, name = self.aggregator.learned, self.aggregator.name
        if regime == "zero_shot" and learned:
            count = sum(p.numel() for p in self.aggregator.parameters())
            raise ValueError(
                f"the {name} aggregator has {count:,} parameters that must be trained, but "
                "regime=zero_shot trains nothing: use model.regime=aggregator_only to train the "
                "aggregator alone (the backbone stays frozen), or mlp / full"
            )
        if regime == "aggregator_only" and not learned:
            raise ValueError(
                f"regime=aggregator_only trains only the aggregator, but {name} has no parameters: "
                "use model.regime=zero_shot"
            )
        if regime == "backbone_only" and not learned:
            raise ValueError(
                f"regime=backbone_only freezes the aggregator, but {name} has no parameters, so it is "
                "regime=full: use model.regime=full"
            )
        return {
            "zero_shot": [],
            "aggregator_only": [self.aggregator],
            "mlp": [*self.backbone.head_modules, self.aggregator],
            "backbone_only": [self.backbone],
            "full": [self],
        }[regime]
