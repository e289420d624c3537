"""A plain Vision Transformer: the non-equivariant baseline that the post-hoc wrappers make invariant.

Factored timm-style into PatchEmbed / Attention / Mlp / Block so that wrappers can call
``forward_features`` (tokens), ``forward_head(tokens, pre_logits=True)`` (the CLS embedding) and the
``head`` separately. The default configuration is the post-hoc experiments' MNIST ViT: 4x4 patches,
64-d, 6 pre-norm blocks, 4 heads, MLP 512, CLS token, learned positions, dropout 0.1 (503,178
parameters for 28x28x1 input and 10 classes). Its head is ``LayerNorm -> Linear`` on the CLS token.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchEmbed(nn.Module):
    """Cut (B, C, H, W) into non-overlapping p x p patches and project each to ``embed_dim``.

    A patch is flattened in (C, p_h, p_w) order and projected by one Linear layer, which is the same
    function as a stride-p convolution. Output (B, N, D) with N = (H/p) * (W/p), patches in row-major
    order.
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Linear(in_channels * patch_size**2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (c, h, w) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                f"got {tuple(x.shape)}"
            )
        p = self.patch_size
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        return self.proj(patches)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and ``F.scaled_dot_product_attention``.

    (B, N, D) -> (B, N, D). Heads take contiguous slices of D (the layout of ``nn.MultiheadAttention``).
    ``return_attention=True`` additionally returns the probabilities (B, heads, N, N), computed
    explicitly (slower; for visualisation only).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if return_attention:
            probs = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
            out = F.dropout(probs, self.attn_drop, self.training) @ v
        else:
            probs = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        return (out, probs) if return_attention else out


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout, token-wise."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + Mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attn_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim, drop=dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if return_attention:
            attn_out, probs = self.attn(self.norm1(x), return_attention=True)
            x = x + attn_out
            return x + self.mlp(self.norm2(x)), probs
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier: (B, C, H, W) -> logits (B, num_classes).

    Adapter contract used by every wrapper in gevit: ``forward_features(x) -> (B, 1+N, D)`` tokens,
    ``forward_head(tokens, pre_logits=True) -> (B, D)`` the CLS embedding, ``head`` maps (B, D) to
    logits, ``embed_dim`` is D.
    """

    # What gevit.analysis.model_facts reads (with model_name and description below).
    model_kind = "vit"
    attention_maps = "tokens"  # forward_features(x, return_attention=True): the token attention of every block
    model_name = "ViT"

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int = 10,
        patch_size: int = 4,
        embed_dim: int = 64,
        depth: int = 6,
        num_heads: int = 4,
        mlp_hidden_dim: int = 512,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.num_classes, self.embed_dim = num_classes, embed_dim
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_hidden_dim, dropout) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor, return_attention: bool = False):
        """Tokens (B, 1+N, D) after the last block; with ``return_attention`` also the list of the
        blocks' attention probabilities, each (B, heads, 1+N, 1+N)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        attentions = []
        for block in self.blocks:
            if return_attention:
                x, probs = block(x, return_attention=True)
                attentions.append(probs)
            else:
                x = block(x)
        return (x, attentions) if return_attention else x

    @property
    def description(self) -> str:
        patch = self.patch_embed.patch_size
        return f"ViT, {len(self.blocks)} blocks, {self.embed_dim}-d, {patch}x{patch} patches"

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        cls = tokens[:, 0]
        return cls if pre_logits else self.head(cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def convert_peer_vit_state_dict(state_dict: dict) -> dict:
    """Map a state_dict of the GEVit-DL2-Project / UvA-DL tutorial ViT onto :class:`VisionTransformer`.

    The peer model names its layers ``input_layer``, ``pos_embedding``, ``transformer.{i}.layer_norm_1``,
    ``attn.in_proj_*`` / ``attn.out_proj`` (``nn.MultiheadAttention``), ``linear.{0,3}`` and
    ``mlp_head.{0,1}``; its patches are flattened in (C, pH, pW) order, as ours, and its fused
    in-projection has our qkv layout, so the conversion only renames.
    """
    renames = {
        "input_layer.": "patch_embed.proj.",
        "pos_embedding": "pos_embed",
        "layer_norm_1.": "norm1.",
        "layer_norm_2.": "norm2.",
        "attn.in_proj_weight": "attn.qkv.weight",
        "attn.in_proj_bias": "attn.qkv.bias",
        "attn.out_proj.": "attn.proj.",
        "linear.0.": "mlp.fc1.",
        "linear.3.": "mlp.fc2.",
        "mlp_head.": "head.",
        "transformer.": "blocks.",
    }
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for old, new in renames.items():
            key = key.replace(old, new)
        converted[key] = value
    return converted
