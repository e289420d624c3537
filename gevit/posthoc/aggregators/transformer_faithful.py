"""The original post-hoc code's LearnedAggregation: attention-only blocks over the views, class-token read-out."""

from __future__ import annotations

import torch
import torch.nn as nn

from gevit.posthoc.aggregators.base import Aggregator


class FaithfulAttentionBlock(nn.Module):
    """``x <- x + MHA_1(LN_1(x)); x <- ReLU(LN_2(x)); x <- x + MHA_2(x)`` on (B, T, D) tokens; no MLP
    (the original's note: a token-wise linear layer "would break equivariance" — it would not, but this
    block keeps the original's form)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn1(h, h, h, need_weights=False)[0]
        x = torch.relu(self.norm2(x))
        return x + self.attn2(x, x, x, need_weights=False)[0]


class FaithfulTransformerAggregator(Aggregator):
    """The original LearnedAggregation (Bant et al., ``sub_models.Transformer``)::

        e(x) = Blocks([c, M(g_1 x), ..., M(g_|G| x)])[0],      logits = head(e(x))

    ``depth`` :class:`FaithfulAttentionBlock` s over the class token ``c`` (initialised ``N(0, 1)`` as the
    original) and the view embeddings, no positional encoding, no projection; the class token's output
    replaces the embedding. Like the original there is no dropout (its ``dropout`` argument was never
    applied). (B, |G|, D) -> (B, D).
    """

    level = "embedding"
    learned = True
    summary = {
        "aggregated": "embeddings",
        "weights": "class-token attention (attention-only blocks)",
        "normalisation": "LayerNorm → MHA → +res → LayerNorm → ReLU → MHA → +res",
        "estimator": "backprop",
        "difference": "the original's architecture (class token N(0,1), output = class token); "
        "same group as the other rows (the original used 8 D4 views everywhere)",
    }

    def __init__(self, embed_dim: int, depth: int = 2, num_heads: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"transformer_faithful needs num_heads to divide the embedding size {embed_dim}, "
                f"got num_heads={num_heads}"
            )
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim))
        self.blocks = nn.Sequential(*(FaithfulAttentionBlock(embed_dim, num_heads) for _ in range(depth)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(embeddings.shape[0], -1, -1), embeddings], dim=1)
        return self.blocks(tokens)[:, 0]
