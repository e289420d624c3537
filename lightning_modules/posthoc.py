"""A LightningModule around :class:`gevit.posthoc.PostHocInvariant`, trained (or not) under a regime."""
from __future__ import annotations

import logging
from typing import Iterable

import torch
import torch.nn as nn

from gevit.posthoc import PostHocInvariant, build_aggregator, build_backbone
from gevit.posthoc.backbones import RANDOM_INIT
from lightning_modules.base import BaseClassifierModule

log = logging.getLogger(__name__)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class PostHocClassifier(BaseClassifierModule):
    """A backbone classifier made invariant to ``group`` by aggregating its outputs over the |G| views of
    each image (one backbone call on B·|G| images), trained under ``regime``.

    ``forward(images (B, C, H, W) in [0, 1]) -> logits (B, num_classes)``. The group acts on the images as
    they come from the data module (background 0): the views are made after normalisation with the
    background set to the normalised value of 0, which is the same as transforming the raw images.

    Args:
        backbone: ``{"source": vit|peer_vit|timm|resnet|checkpoint, ...options}`` for
            :func:`gevit.posthoc.build_backbone` (``ckpt_path`` = the trained backbone).
        aggregator: ``{"name": mean|max|sum|lambda|transformer|equiattention|mean_probs|most_probable|
            most_certain|equizero, ...options}`` for :func:`gevit.posthoc.build_aggregator`.
        group: ``c4``, ``flip``, ``d4``, ``c8``, ``c16`` (any name of :mod:`gevit.groups`).
        regime: ``zero_shot`` (nothing trained), ``aggregator_only``, ``mlp`` (head + aggregator) or ``full``.
            Frozen parameters have ``requires_grad=False`` and frozen submodules stay in eval mode
            (dropout off, BatchNorm running statistics) whenever the module is put in training mode.
        interpolation, padding: how non-multiples of 90 degrees are resampled; ``zeros`` or ``circular_mask``.
        **kwargs: :class:`BaseClassifierModule`'s arguments (classes, image shape, normalisation, optimiser).
    """

    def __init__(self, backbone: dict, aggregator: dict, group: str = "c4", regime: str = "zero_shot",
                 interpolation: str = "bilinear", padding: str = "zeros", **kwargs):
        super().__init__(**kwargs)
        backbone_options, aggregator_options = dict(backbone), dict(aggregator)
        source = backbone_options.pop("source")
        net_backbone = build_backbone(source, num_classes=self.num_classes, in_channels=self.in_channels,
                                      image_size=self.image_size, **backbone_options)
        net_aggregator = build_aggregator(aggregator_options.pop("name"), net_backbone.embed_dim,
                                          net_backbone.spatial_features, **aggregator_options)
        background = (-self.input_mean / self.input_std).flatten()
        self.net = PostHocInvariant(net_backbone, group, net_aggregator, interpolation=interpolation,
                                    padding=padding, background=background)
        self.regime = regime
        trainable = self.net.trainable_modules(regime)
        self.net.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)
        self.train(self.training)
        if net_backbone.weights_source == RANDOM_INIT and regime != "full":
            log.warning("the %s backbone has RANDOM weights (model.backbone.ckpt_path is not set): regime=%s does "
                        "not train it, so results mean nothing beyond a smoke test", source, regime)
        log.info("post-hoc %s over %s (|G|=%d), regime %s, backbone weights: %s; parameters %s", net_aggregator.name,
                 self.net.group.name, self.net.group.order, regime, net_backbone.weights_source,
                 self.parameter_counts())

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def trainable_modules(self) -> list[nn.Module]:
        return self.net.trainable_modules(self.regime)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        seen = set()
        for module in self.trainable_modules():
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def train(self, mode: bool = True) -> "PostHocClassifier":
        """Training mode for the trained parts only; frozen parts always run in eval mode."""
        super().train(mode)
        if mode:
            self.net.eval()
            for module in self.trainable_modules():
                module.train()
        return self

    def parameter_counts(self) -> dict:
        """The base counts (total / trainable / frozen) and the size of each part."""
        head = _count(self.net.backbone.head)
        return {**super().parameter_counts(),
                "model/params_backbone": _count(self.net.backbone) - head,
                "model/params_head": head,
                "model/params_aggregator": _count(self.net.aggregator)}
