"""Element-wise maximum of the view embeddings."""
from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator, register_aggregator


@register_aggregator("max")
class MaxAggregator(Aggregator):
    """``e(x)_d = max_g M(gx)_d`` for every embedding dimension d, then ``logits = head(e(x))``.

    (B, |G|, D) embeddings -> (B, D).
    """

    level = "embedding"

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.amax(dim=1)
