"""Mean of the view embeddings (equitune)."""

from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator


class MeanAggregator(Aggregator):
    """``e(x) = (1/|G|) sum_g M(gx)``, then ``logits = head(e(x))``.

    (B, |G|, D) embeddings -> (B, D).
    """

    level = "embedding"
    summary = {
        "aggregated": "embeddings",
        "weights": "uniform 1/|G|",
        "normalisation": "–",
        "estimator": "–",
        "difference": "same as the original (Mean, equitune)",
    }

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.mean(dim=1)
