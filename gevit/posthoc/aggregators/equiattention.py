"""EquiAttention: attention across the views produces the weights of a weighted mean of their features."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from gevit.posthoc.aggregators.base import Aggregator, register_aggregator

FEATURES = ("auto", "embedding", "spatial")


def _mlp(dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


@register_aggregator("equiattention")
class EquiAttentionAggregator(Aggregator):
    """EquiAttention (Vlasenko et al., 2024): queries and keys from every view, attention across views::

        q_g = Q(M(gx)),  k_g = K(M(gx)),   A = softmax_rows(q k^T / sqrt(d))      (|G| x |G|)
        w_h = (1/|G|) sum_g A[g, h],        out = sum_h w_h v_h

    ``Q`` and ``K`` are MLPs ``D -> hidden -> d`` on the pre-logits embeddings ``M(gx)``. The values are

    - level ``embedding``: ``v_h = M(g_h x)``; ``logits = head(out)``;
    - level ``spatial``: ``v_h = g_h^-1 . F(g_h x)``, the view's spatial feature map (C, h, w) with the
      inverse group element applied, so the maps are aligned before they are combined;
      ``logits = head(pool(out))`` with the backbone's own pooling. Transforming the input by ``u`` permutes
      the views and turns ``out`` into ``u . out`` (exactly for C4 / flip / D4), which the global pooling
      removes.

    ``features`` chooses the level: ``auto`` (spatial when the backbone has spatial feature maps),
    ``embedding`` or ``spatial``. ``Q``'s last layer starts at zero, so untrained attention is uniform and
    the aggregator is the mean. (B, |G|, D) embeddings [and (B, |G|, C, h, w) aligned maps] -> (B, D)
    [(B, C, h, w)].
    """

    def __init__(self, dim: int, hidden_dim: int = 128, attn_dim: int = 128, spatial: bool = False):
        super().__init__()
        self.level = "spatial" if spatial else "embedding"
        self.query = _mlp(dim, hidden_dim, attn_dim)
        self.key = _mlp(dim, hidden_dim, attn_dim)
        nn.init.zeros_(self.query[-1].weight)
        nn.init.zeros_(self.query[-1].bias)
        self.scale = 1.0 / math.sqrt(attn_dim)

    @classmethod
    def create(cls, embed_dim: int, spatial_features: bool, features: str = "auto",
               **options) -> "EquiAttentionAggregator":
        if features not in FEATURES:
            raise ValueError(f"equiattention features must be one of {FEATURES}, got {features!r}")
        if features == "spatial" and not spatial_features:
            raise ValueError("equiattention features=spatial needs a backbone with spatial feature maps (a CNN); "
                             "this backbone has none: use features=embedding (or auto)")
        spatial = spatial_features if features == "auto" else features == "spatial"
        return cls(dim=embed_dim, spatial=spatial, **options)

    def weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, |G|, D) -> (B, |G|) view weights (positive, summing to one)."""
        attention = (self.query(embeddings) @ self.key(embeddings).transpose(1, 2) * self.scale).softmax(dim=-1)
        return attention.mean(dim=1)

    def forward(self, embeddings: torch.Tensor, values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embeddings`` (B, |G|, D); ``values`` (B, |G|, ...) default to the embeddings -> (B, ...)."""
        values = embeddings if values is None else values
        weights = self.weights(embeddings)
        return (weights.reshape(*weights.shape, *([1] * (values.ndim - 2))) * values).sum(dim=1)
