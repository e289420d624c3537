"""Attention maps: GE-ViT / GSA-Nets local group attention and ViT token attention (with rollout).

GE-ViT probabilities (``GroupTransformer.forward_features(x, return_intermediates=True)["attention"]``):
lifting layer (B, heads, HW, |G|, k*k), group layers (B, heads, HW, |G|_v, |G|_g, |G|_m * k*k), for the
k x k neighbourhood of each of the HW query positions (global attention: k = 2S - 1 on an S x S map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gevit.models.group_transformer import GroupTransformer
from gevit.models.vit import VisionTransformer


def square_side(positions: int) -> int:
    """Side of a square map with ``positions`` positions."""
    side = round(positions**0.5)
    if side * side != positions:
        raise ValueError(f"expected a square feature map, got {positions} positions")
    return side


def neighbourhood_attention(probs: torch.Tensor, group_order: int) -> torch.Tensor:
    """GE-ViT attention probabilities -> (B, heads, HW, |G|_v, k*k): the weight each query position puts on
    each neighbour, per output group element ``v``.

    Lifting probabilities are already (B, heads, HW, |G|, k*k). Group-layer probabilities (B, heads, HW,
    |G|_v, |G|_g, |G|_m * k*k) are summed over the key elements ``m`` and averaged over the query elements
    ``g`` (each (v, g) row sums to one, so the result still sums to one over the neighbourhood).
    """
    if probs.ndim == 5:
        return probs
    if probs.ndim != 6 or probs.shape[-1] % group_order:
        raise ValueError(
            f"expected lifting (B, heads, HW, |G|, k*k) or group-layer (B, heads, HW, |G|, |G|, "
            f"|G|*k*k) attention probabilities for |G|={group_order}, got {tuple(probs.shape)}"
        )
    b, heads, hw, v, g, _ = probs.shape
    return probs.view(b, heads, hw, v, g, group_order, -1).sum(-2).mean(-2)


def window_side(neighbourhood: torch.Tensor) -> int:
    """k of (B, heads, HW, |G|, k*k) neighbourhood attention."""
    return square_side(neighbourhood.shape[-1])


def attention_received(neighbourhood: torch.Tensor) -> torch.Tensor:
    """(B, heads, HW, |G|, k*k) -> (B, h, w): how much attention each position receives, summed over
    queries, heads and group elements and normalised to sum to one (an attention-rollout-like saliency map
    for local attention: ``F.fold`` scatters each query's k x k weights back onto the key positions)."""
    side, k = square_side(neighbourhood.shape[2]), window_side(neighbourhood)
    per_query = neighbourhood.sum(dim=(1, 3)).transpose(1, 2)  # (B, k*k, HW), unfold's layout
    received = F.fold(per_query, (side, side), k, padding=k // 2)[:, 0]
    return received / received.sum(dim=(-2, -1), keepdim=True)


@torch.no_grad()
def group_attention_maps(net: GroupTransformer, images: torch.Tensor) -> list[dict]:
    """Per attention layer of a GroupTransformer (lifting first), for normalised images (B, C, H, W):
    ``received`` (B, h, w) (:func:`attention_received`), ``centre`` (B, |G|, k, k) the attention of the centre
    query position over its neighbourhood averaged over heads, per output group element, ``side`` (h) and
    ``window`` (k)."""
    _, extras = net.forward_features(images, return_intermediates=True)
    layers = []
    for probs in extras["attention"]:
        neighbourhood = neighbourhood_attention(probs, net.group.order)
        side, k = square_side(neighbourhood.shape[2]), window_side(neighbourhood)
        centre = (side // 2) * side + side // 2
        layers.append(
            {
                "received": attention_received(neighbourhood),
                "side": side,
                "window": k,
                "centre": neighbourhood[:, :, centre].mean(1).unflatten(-1, (k, k)),
            }
        )
    return layers


def attention_rollout(attentions: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): per-block probabilities (B, depth, heads, N, N) ->
    (B, N, N) products of the head-averaged attention with the residual path, ``0.5 A + 0.5 I``,
    renormalised per row."""
    averaged = attentions.mean(2)
    eye = torch.eye(averaged.shape[-1], dtype=averaged.dtype, device=averaged.device)
    rollout = eye.expand_as(averaged[:, 0]).clone()
    for block in range(averaged.shape[1]):
        mixed = 0.5 * averaged[:, block] + 0.5 * eye
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    return rollout


@torch.no_grad()
def vit_cls_attention(net: VisionTransformer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (B, C, H, W) -> the CLS token's attention over the patches on the g x g patch grid:
    per block averaged over heads (B, depth, g, g), and the attention rollout (B, g, g)."""
    _, attentions = net.forward_features(images, return_attention=True)
    stacked = torch.stack(attentions, dim=1)  # (B, depth, heads, 1+N, 1+N)
    grid = net.patch_embed.grid_size
    per_block = stacked.mean(2)[:, :, 0, 1:].unflatten(-1, (grid, grid))
    rollout = attention_rollout(stacked)[:, 0, 1:].unflatten(-1, (grid, grid))
    return per_block, rollout
