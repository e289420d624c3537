"""Test-time augmentation as published: the mean of the per-view logits."""

from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator


class TTAAggregator(Aggregator):
    """``logits(x) = (1/|G|) sum_g z(gx)`` — the original post-hoc code's ``NormalMeanPool`` ("ViT + TTA").

    (B, |G|, K) logits -> (B, K). Behind a linear head this equals ``mean`` of the embeddings; behind the
    ViT's LayerNorm + Linear head it does not. The published TTA rows used the 8 views of D4 even on
    RotMNIST: ``model.group=p4m``.
    """

    level = "logits"
    display_name = "tta"
    summary = {
        "aggregated": "logits",
        "weights": "uniform 1/|G|",
        "normalisation": "–",
        "estimator": "–",
        "difference": "same as the original (NormalMeanPool); the published rows used D4 views",
    }

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.mean(dim=1)
