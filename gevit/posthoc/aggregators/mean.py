"""Mean of the view embeddings (equitune)."""
from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator, register_aggregator


@register_aggregator("mean")
class MeanAggregator(Aggregator):
    """``e(x) = (1/|G|) sum_g M(gx)``, then ``logits = head(e(x))``.

    (B, |G|, D) embeddings -> (B, D).
    """

    level = "embedding"

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.mean(dim=1)
