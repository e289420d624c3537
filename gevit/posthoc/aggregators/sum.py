"""Sum of the view embeddings."""
from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator, register_aggregator


@register_aggregator("sum")
class SumAggregator(Aggregator):
    """``e(x) = sum_g M(gx)``, then ``logits = head(e(x))``.

    (B, |G|, D) embeddings -> (B, D). Behind a scale-invariant head (the ViT's LayerNorm) this predicts
    exactly as ``mean``; behind a linear head it multiplies the mean's logits by |G|.
    """

    level = "embedding"

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.sum(dim=1)
