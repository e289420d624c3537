"""Plain, slow reference implementations of the lifting and group self-attention layers, written
straight from the definitions (one query at a time), to check the fast paths in gevit.layers."""

from __future__ import annotations

import math

import torch

from gevit.groups import Group
from gevit.layers.encodings import PositionalEncoding


def _position(group: Group, v: int, offset: torch.Tensor, encoding: PositionalEncoding) -> torch.Tensor:
    """The normalised (row, col) offset as seen by output element v."""
    acted = encoding.offset_matrix(group, v, offset.dtype) @ offset
    return torch.where(acted.abs() < 1e-12, torch.zeros_like(acted), acted)


def _embedding_index(group: Group, v: int, g: int, m: int, encoding: PositionalEncoding) -> int:
    return encoding.embedding_element(group, v, g, m)


def _heads(linear, x_vec, mid, heads):
    """Project a channel vector and split it as (c, head) -> (heads, mid)."""
    return (linear.weight @ x_vec + linear.bias).view(mid, heads).T


def reference_lifting(layer, x: torch.Tensor) -> torch.Tensor:
    b, cin, h, w = x.shape
    group, k, mid, heads = layer.group, layer.patch_size, layer.mid_channels, layer.num_heads
    half, p = k // 2, layer.pos_channels
    out = torch.zeros(b, mid * heads, group.order, h, w, dtype=x.dtype)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                q = _heads(layer.query, x[bi, :, i, j], mid, heads) / math.sqrt(cin)
                for v in range(group.order):
                    logits, values = [], []
                    for di in range(-half, half + 1):
                        for dj in range(-half, half + 1):
                            y, z = i + di, j + dj
                            if not (0 <= y < h and 0 <= z < w):
                                continue
                            offset = torch.tensor([di / half, dj / half], dtype=x.dtype)
                            pos = _position(group, v, offset, layer.encoding)
                            row = layer.row_embedding(pos[:1])[0]
                            col = layer.col_embedding(pos[1:])[0]
                            key = _heads(layer.key, x[bi, :, y, z], mid, heads)
                            logits.append((q * key).sum(-1) + q[:, :p] @ row + q[:, p:] @ col)
                            values.append(_heads(layer.value, x[bi, :, y, z], mid, heads))
                    probs = torch.stack(logits).softmax(0)  # (neighbours, heads)
                    attended = (probs.unsqueeze(-1) * torch.stack(values)).sum(0)  # (heads, mid)
                    out[bi, :, v, i, j] = attended.T.reshape(-1)
    return torch.einsum("oc,bcgij->bogij", layer.wout.weight, out) + layer.wout.bias.view(1, -1, 1, 1, 1)


def reference_group(layer, x: torch.Tensor) -> torch.Tensor:
    b, cin, n, h, w = x.shape
    group, k, mid, heads = layer.group, layer.patch_size, layer.mid_channels, layer.num_heads
    half, p = k // 2, layer.pos_channels
    out = torch.zeros(b, mid * heads, n, h, w, dtype=x.dtype)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                for v in range(n):
                    total = torch.zeros(heads, mid, dtype=x.dtype)
                    for g in range(n):
                        q = _heads(layer.query, x[bi, :, g, i, j], mid, heads) / math.sqrt(cin)
                        logits, values = [], []
                        for m in range(n):
                            embedding = layer.group_embedding.weight[_embedding_index(group, v, g, m, layer.encoding)]
                            for di in range(-half, half + 1):
                                for dj in range(-half, half + 1):
                                    y, z = i + di, j + dj
                                    if not (0 <= y < h and 0 <= z < w):
                                        continue
                                    offset = torch.tensor([di / half, dj / half], dtype=x.dtype)
                                    pos = _position(group, v, offset, layer.encoding)
                                    row = layer.row_embedding(pos[:1])[0]
                                    col = layer.col_embedding(pos[1:])[0]
                                    key = _heads(layer.key, x[bi, :, m, y, z], mid, heads)
                                    logits.append(
                                        (q * key).sum(-1)
                                        + q[:, :p] @ row
                                        + q[:, p : 2 * p] @ col
                                        + q[:, 2 * p :] @ embedding
                                    )
                                    values.append(_heads(layer.value, x[bi, :, m, y, z], mid, heads))
                        probs = torch.stack(logits).softmax(0)
                        total += (probs.unsqueeze(-1) * torch.stack(values)).sum(0)
                    out[bi, :, v, i, j] = total.T.reshape(-1)
    return torch.einsum("oc,bcgij->bogij", layer.wout.weight, out) + layer.wout.bias.view(1, -1, 1, 1, 1)
