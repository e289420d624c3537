"""Sum of the view embeddings."""

from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator


class SumAggregator(Aggregator):
    """``e(x) = sum_g M(gx)``, then ``logits = head(e(x))``.

    (B, |G|, D) embeddings -> (B, D). Behind a scale-invariant head (the ViT's LayerNorm) this predicts
    exactly as ``mean``; behind a linear head it multiplies the mean's logits by |G|.
    """

    level = "embedding"
    summary = {
        "aggregated": "embeddings",
        "weights": "1",
        "normalisation": "none (= mean behind a LayerNorm head)",
        "estimator": "–",
        "difference": "same as the original (Sum)",
    }

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.sum(dim=1)
