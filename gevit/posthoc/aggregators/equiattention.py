"""EquiAttention: attention across the views produces the weights of a weighted mean of their features."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from gevit.posthoc.aggregators._features import resolve_level, weighted_sum
from gevit.posthoc.aggregators.base import Aggregator


def _mlp(dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))


class EquiAttentionAggregator(Aggregator):
    """EquiAttention (Vlasenko et al., 2024): queries and keys from every view, attention across views::

        q_g = Q(M(gx)),  k_g = K(M(gx)),   A = softmax_rows(q k^T / sqrt(d))      (|G| x |G|)
        w_h = (1/|G|) sum_g A[g, h],        out = sum_h w_h v_h

    ``Q`` and ``K`` are MLPs ``D -> hidden -> d`` on the pre-logits embeddings ``M(gx)``. The values are

    - level ``embedding``: ``v_h = M(g_h x)``; ``logits = head(out)``;
    - level ``spatial``: ``v_h = g_h^-1 . F(g_h x)``, the view's spatial feature map (C, h, w) with the
      inverse group element applied, so the maps are aligned before they are combined. Transforming the
      input by ``u`` permutes the views and turns ``out`` into ``u . out`` (exactly for C4 / flip / D4);
      the wrapper then pools invariantly (the backbone's own pooling only where it is invariant) and
      applies the head.

    ``features`` chooses the level: ``auto`` (spatial when the backbone has spatial feature maps),
    ``embedding`` or ``spatial``. ``Q``'s last layer starts at zero, so untrained attention is uniform and
    the aggregator is the mean. (B, |G|, D) embeddings [and (B, |G|, C, h, w) aligned maps] -> (B, D)
    [(B, C, h, w)].
    """

    level = "embedding"
    learned = True
    weighted_views = True
    summary = {
        "aggregated": "aligned maps g⁻¹F(gx) on CNNs (`features: auto`), else embeddings",
        "weights": "column means of softmax(QKᵀ/√d) across views",
        "normalisation": "softmax over views",
        "estimator": "backprop",
        "difference": "Q, K = MLPs of the pooled embedding (the original: per-channel conv on RN50's 7×7 "
        "maps, then MLPs), so any map size fits; Q starts at zero (= mean); pooled "
        "invariantly (the original fed CLIP's position-dependent attention pool)",
    }

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int = 128,
        attn_dim: int = 128,
        features: str = "auto",
        spatial_features: bool = False,
    ):
        super().__init__()
        self.level = resolve_level("equiattention", features, spatial_features)
        self.query = _mlp(embed_dim, hidden_dim, attn_dim)
        self.key = _mlp(embed_dim, hidden_dim, attn_dim)
        nn.init.zeros_(self.query[-1].weight)
        nn.init.zeros_(self.query[-1].bias)
        self.scale = 1.0 / math.sqrt(attn_dim)

    def weights(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, |G|, D) -> (B, |G|) view weights (positive, summing to one)."""
        attention = (self.query(embeddings) @ self.key(embeddings).transpose(1, 2) * self.scale).softmax(dim=-1)
        return attention.mean(dim=1)

    def forward(self, embeddings: torch.Tensor, values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``embeddings`` (B, |G|, D); ``values`` (B, |G|, ...) default to the embeddings -> (B, ...)."""
        return weighted_sum(self.weights(embeddings), embeddings if values is None else values)
