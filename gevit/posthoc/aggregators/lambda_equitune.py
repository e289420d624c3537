"""λ-equitune: a weighted mean of the view embeddings with learned, positive, normalised weights."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gevit.posthoc.aggregators.base import Aggregator, register_aggregator

NORMALIZATIONS = ("softmax", "sum")


@register_aggregator("lambda")
class LambdaAggregator(Aggregator):
    """λ-equitune (Basu et al., 2023) on embeddings::

        e(x) = sum_g λ(gx) M(gx) / sum_g λ(gx),     logits = head(e(x))

    with a positive importance ``λ(gx)`` computed from the view's own embedding by a small scoring
    network ``s: D -> hidden -> 1`` (Linear, GELU, Linear):

    - ``normalization="softmax"``: ``λ = exp(s(M(gx)))``, i.e. weights ``softmax_g s(M(gx))``;
    - ``normalization="sum"``: ``λ = softplus(s(M(gx))) + eps``, weights ``λ / sum_g λ``.

    Both are positive and sum to one, so the weights can never divide by (almost) zero, which the
    original post-hoc code allowed. The scorer's last layer starts at zero: untrained, this is ``mean``.
    (B, |G|, D) -> (B, D); :meth:`weights` gives the (B, |G|) weights.
    """

    level = "embedding"

    def __init__(self, dim: int, hidden_dim: int = 128, normalization: str = "softmax", eps: float = 1e-6):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization, self.eps = normalization, eps
        self.score = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)

    @classmethod
    def create(cls, embed_dim: int, spatial_features: bool, **options) -> "LambdaAggregator":
        return cls(dim=embed_dim, **options)

    def weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, |G|, D) -> positive weights (B, |G|) summing to one over the views."""
        scores = self.score(embeddings).squeeze(-1)
        if self.normalization == "softmax":
            return scores.softmax(dim=1)
        lam = F.softplus(scores) + self.eps
        return lam / lam.sum(dim=1, keepdim=True)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (self.weights(embeddings).unsqueeze(-1) * embeddings).sum(dim=1)

    def extra_repr(self) -> str:
        return f"level={self.level}, normalization={self.normalization}"
