"""Mean of the per-view class probabilities."""

from __future__ import annotations

import math

import torch

from gevit.posthoc.aggregators.base import Aggregator


class MeanProbsAggregator(Aggregator):
    """``p(x) = (1/|G|) sum_g softmax(z(gx))``, returned as logits ``log p(x)``, computed stably as
    ``logsumexp_g log_softmax(z(gx)) - log|G|``. (The original's TTA baseline averages logits: ``tta``.)

    (B, |G|, K) logits -> (B, K).
    """

    level = "logits"
    summary = {
        "aggregated": "probabilities",
        "weights": "uniform 1/|G|",
        "normalisation": "softmax per view",
        "estimator": "–",
        "difference": "not in the originals (their TTA averages logits: `tta`); "
        "kept as the probabilistic variant, in log space",
    }

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(logits.log_softmax(dim=-1), dim=1) - math.log(logits.shape[1])
