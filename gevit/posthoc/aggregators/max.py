"""Element-wise maximum of the view embeddings."""

from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator


class MaxAggregator(Aggregator):
    """``e(x)_d = max_g M(gx)_d`` for every embedding dimension d, then ``logits = head(e(x))``.

    (B, |G|, D) embeddings -> (B, D).
    """

    level = "embedding"
    summary = {
        "aggregated": "embeddings",
        "weights": "element-wise max",
        "normalisation": "–",
        "estimator": "gradient to the maximal view per dimension",
        "difference": "same as the original (Max)",
    }

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.amax(dim=1)
