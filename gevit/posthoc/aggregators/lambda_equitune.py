"""λ-equitune: a weighted mean of the views with learned, positive, normalised weights."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gevit.posthoc.aggregators._features import resolve_level, weighted_sum
from gevit.posthoc.aggregators.base import Aggregator

NORMALIZATIONS = ("softmax", "sum")


class LambdaAggregator(Aggregator):
    """λ-equitune (Basu et al., 2023)::

        w_g = λ(gx) / sum_h λ(hx),      e(x) = sum_g w_g M(gx),          logits = head(e(x))   (embedding)
                                         F(x) = sum_g w_g g^-1 F(gx),     logits = head(pool(F(x))) (spatial)

    with a positive importance ``λ(gx)`` computed from the view's own embedding ``M(gx)`` by a small
    scoring network ``s: D -> hidden -> 1`` (Linear, GELU, Linear):

    - ``normalization="softmax"``: ``λ = exp(s(M(gx)))``, i.e. weights ``softmax_g s(M(gx))``;
    - ``normalization="sum"``: ``λ = softplus(s(M(gx))) + eps``, weights ``λ / sum_g λ``.

    Both are positive and sum to one, so the weights can never divide by (almost) zero, which the
    original post-hoc code allowed. ``features="spatial"`` (or ``auto`` on a CNN) is the *equivariant*
    λ-equitune of Vlasenko et al.: the weights combine the views' last feature maps ``F(gx)`` after
    ``g^-1`` has aligned them, and the combined map goes through the backbone's pooling (made invariant by
    the wrapper) and head. The scorer's last layer starts at zero: untrained, this is ``mean``.
    (B, |G|, D) embeddings [and (B, |G|, C, h, w) aligned maps] -> (B, D) [(B, C, h, w)].
    """

    level = "embedding"
    learned = True
    weighted_views = True
    display_name = "lambda"
    summary = {
        "aggregated": "embeddings (`features: spatial`: aligned maps g⁻¹F(gx))",
        "weights": "λ(gx) = score MLP D→128→1 (GELU) of the view's embedding",
        "normalisation": "softmax over views (or softplus + ε, / Σ)",
        "estimator": "backprop",
        "difference": "weights positive and normalised (the original could divide by ≈0, Basu's did "
        "not normalise); scored from the view's embedding, not a frozen CLIP copy "
        "(Basu) or a per-channel conv on 7×7 maps (write-up 003), so any backbone fits",
    }

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int = 128,
        normalization: str = "softmax",
        eps: float = 1e-6,
        features: str = "embedding",
        spatial_features: bool = False,
    ):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.level = resolve_level("lambda", features, spatial_features)
        self.normalization, self.eps = normalization, eps
        self.score = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
        nn.init.zeros_(self.score[-1].weight)
        nn.init.zeros_(self.score[-1].bias)

    def weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, |G|, D) -> positive weights (B, |G|) summing to one over the views."""
        scores = self.score(embeddings).squeeze(-1)
        if self.normalization == "softmax":
            return scores.softmax(dim=1)
        lam = F.softplus(scores) + self.eps
        return lam / lam.sum(dim=1, keepdim=True)

    def forward(self, embeddings: torch.Tensor, values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embeddings`` (B, |G|, D); ``values`` (B, |G|, ...) default to the embeddings -> (B, ...)."""
        return weighted_sum(self.weights(embeddings), embeddings if values is None else values)

    def extra_repr(self) -> str:
        return f"level={self.level}, normalization={self.normalization}"
