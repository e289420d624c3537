"""Mean of the per-view class probabilities: test-time augmentation over the group."""
from __future__ import annotations

import math

import torch

from gevit.posthoc.aggregators.base import Aggregator, register_aggregator


@register_aggregator("mean_probs")
class MeanProbsAggregator(Aggregator):
    """``p(x) = (1/|G|) sum_g softmax(z(gx))``, returned as logits ``log p(x)``, computed stably as
    ``logsumexp_g log_softmax(z(gx)) - log|G|``. The test-time-augmentation baseline.

    (B, |G|, K) logits -> (B, K).
    """

    level = "logits"

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(logits.log_softmax(dim=-1), dim=1) - math.log(logits.shape[1])
