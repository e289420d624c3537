"""Lifting and group self-attention with rotated relative positional encodings (GE-ViT / GSA-Nets).

Shapes: the lifting layer maps an image ``(B, C_in, H, W)`` to a function on (group x space)
``(B, C_out, |G|, H, W)``; the group layer maps ``(B, C_in, |G|, H, W)`` to ``(B, C_out, |G|, H, W)``.

Attention is local (a k x k neighbourhood, positions outside the image masked out) or global
(``patch_size=None``: implemented as a (2S-1) x (2S-1) neighbourhood on an S x S map, i.e. every
position sees every other one). Each head has ``mid_channels`` channels; logits are scaled by
``1/sqrt(C_in)`` (as in the original code). For an output group element ``v``:

* lifting: ``logit(v, x, y) = q(x) . [k(y) + P_v(y - x)]``, softmax over the neighbours ``y``;
* group: ``logit(v, g, x, m, y) = q(g, x) . [k(m, y) + P_v(y - x) + E(idx(v, g, m))]``, softmax over
  ``(m, y)`` for each query element ``g``, and the output at ``v`` sums the attended values over ``g``.

``P_v`` is the spatial encoding: row and column MLPs over normalised offsets acted on by ``v``;
``E`` an embedding of group elements. How ``P_v`` and ``idx`` see the group is the layer's positional
encoding (``encoding=``, one class each in ``gevit/layers/encodings.py``):

* ``gevit`` (GE-ViT, exact): ``P_v(d) = P(A_v^-1 d)`` and ``idx = a b^-1 a`` with ``a = v^-1 g``,
  ``b = v^-1 m``. Both depend on (v, g, m) only through ``v^-1 g`` and ``v^-1 m``, which makes the layers
  equivariant: rotating the input by ``u`` (90-degree multiples, and mirrors for E(2) groups) rotates the
  output in space and moves the group axis by ``g -> u g``.
* ``gsanet`` (GSA-Nets, faithful to its code): ``P_v(d) = P(A_v d)`` and ``idx = v m g^-1``: not
  equivariant, by a small amount — the flaw GE-ViT corrects.

The fast path builds the logits ``(B, heads, P, |G|_v, |G|_g, |G|_m * k^2)`` for a chunk of P query
positions with broadcast adds (the content term does not depend on ``v``, the spatial term not on
``m``, the group term not on the offset), sums the probabilities over ``g`` before touching the
values, and multiplies them with the values in one batched matmul. Query rows are processed in chunks
only when a batch would exceed ``chunk_elements`` logits (a memory bound for large evaluation
batches); keys/values are strided views of the padded projections, copied once per chunk; the
input-independent positional tables are computed once per forward (once per weight change without
gradients), and without gradients the softmax runs in place. Attention dropout acts on the summed
probabilities (cheaper than on the full tensor; identical in eval mode).

Fused kernels. The eager code above is the reference; by default each layer runs a fused kernel that
never materialises the logits (``gevit/layers/kernels``): a C++/OpenMP kernel on the CPU (float32 and
float64) and a Triton kernel on CUDA, selected per call from the input's device, with the eager path as
the fallback when a kernel is unavailable (one log line says which path runs). Choose with the
environment variable ``GEVIT_ATTENTION=auto|eager|cpu|triton``,
:func:`gevit.layers.kernels.backend.set_attention_backend`, or a layer's ``backend`` attribute (the choice
lives in :mod:`gevit.layers.kernels.backend`). ``return_attention=True`` always runs the eager path (it returns the
probabilities). Inside the kernels attention dropout acts on the summed probabilities too, drawn from
a counter-based generator seeded from torch's RNG, so ``torch.manual_seed`` makes runs reproducible.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gevit.groups import Group, get_group
from gevit.layers.encodings import PositionalEncoding, get_encoding
from gevit.layers.kernels.backend import select_backend

log = logging.getLogger(__name__)


class Swish(nn.Module):
    """x * sigmoid(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class PositionMLP(nn.Module):
    """Scalar normalised coordinate -> embedding: Linear(1, hidden) -> LayerNorm -> Swish -> Linear."""

    def __init__(self, out_dim: int, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(1, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.act = Swish()
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """(...) coordinates -> (..., out_dim)."""
        return self.out(self.act(self.norm(self.inp(coords.unsqueeze(-1)))))


def normalised_offsets(patch_size: int) -> torch.Tensor:
    """Relative (row, col) offsets of a patch_size x patch_size neighbourhood scaled to [-1, 1],
    shape (k*k, 2) in row-major order (the order of ``F.unfold``)."""
    if patch_size < 3 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be odd and >= 3, got {patch_size}")
    half = (patch_size - 1) / 2
    axis = (torch.arange(patch_size, dtype=torch.float64) - half) / half
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


def acted_offsets(group: Group, patch_size: int, encoding: str | PositionalEncoding) -> torch.Tensor:
    """(|G|, k*k, 2) offsets seen by each output element v: the encoding's ``offset_matrix(v) @ d``."""
    offsets = normalised_offsets(patch_size)
    mats = get_encoding(encoding).offset_matrices(group)
    # Zero out float dust (cos(pi/2) = 6e-17) so that exactly symmetric grids stay exactly symmetric.
    acted = torch.einsum("vij,pj->vpi", mats, offsets)
    return torch.where(acted.abs() < 1e-12, torch.zeros_like(acted), acted)


def group_embedding_indices(group: Group, encoding: str | PositionalEncoding) -> torch.Tensor:
    """(|G|_v, |G|_g, |G|_m) indices into the group embedding: the encoding's ``embedding_element``."""
    return get_encoding(encoding).embedding_indices(group)


def outside_mask(height: int, width: int, patch_size: int, device, dtype) -> torch.Tensor:
    """(H*W, k*k) additive mask: 0 for neighbours inside the image, -inf outside."""
    ones = torch.ones(1, 1, height, width, device=device, dtype=dtype)
    inside = F.unfold(ones, patch_size, padding=patch_size // 2)[0].T  # (HW, k*k)
    return torch.zeros_like(inside).masked_fill(inside == 0, float("-inf"))


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim; in place when no gradient is needed (saves a full-size allocation)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return logits.softmax(-1)
    logits -= logits.amax(-1, keepdim=True)
    logits.exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


class _GroupAttentionBase(nn.Module):
    """Shared parameters and bookkeeping of the lifting and group layers."""

    def __init__(
        self,
        group,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        num_heads: int,
        patch_size: Optional[int],
        image_size: int,
        attention_dropout: float,
        encoding: str | PositionalEncoding,
        pos_channels: int,
    ):
        super().__init__()
        self.encoding = get_encoding(encoding)
        self.group = get_group(group)
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels
        self.num_heads = num_heads
        self.is_global = patch_size is None
        self.patch_size = 2 * image_size - 1 if self.is_global else patch_size
        self.attention_dropout = attention_dropout
        self.pos_channels = pos_channels
        self.row_embedding = PositionMLP(pos_channels)
        self.col_embedding = PositionMLP(pos_channels)
        self.register_buffer(
            "acted_offsets", acted_offsets(self.group, self.patch_size, self.encoding).float(), persistent=False
        )
        self.wout = nn.Linear(mid_channels * num_heads, out_channels)
        self._mask_cache: dict = {}
        self._table_cache: dict = {}
        # Logits per chunk of query rows: bounds the memory of large batches (0: never chunk).
        self.chunk_elements = 1 << 26

    @property
    def attention_window(self) -> Optional[int]:
        """Side k of the k x k neighbourhood each query attends to, or None for global attention."""
        return None if self.is_global else self.patch_size

    def spatial_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row/column encodings of every acted offset: two (|G|, k*k, pos_channels) tensors.

        They do not depend on the input: without gradients they are computed once and reused until a
        parameter changes (tracked through the parameters' version counters)."""
        if torch.is_grad_enabled() and self.training:
            return self._compute_tables()
        params = list(self.row_embedding.parameters()) + list(self.col_embedding.parameters())
        key = (tuple(p._version for p in params), tuple(p.data_ptr() for p in params), self.acted_offsets.dtype)
        if torch.is_grad_enabled() or self._table_cache.get("key") != key:
            tables = self._compute_tables()
            if torch.is_grad_enabled():
                return tables
            self._table_cache = {"key": key, "tables": tables}
        return self._table_cache["tables"]

    def _compute_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.row_embedding(self.acted_offsets[..., 0]), self.col_embedding(self.acted_offsets[..., 1])

    def mask(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        key = (height, width, like.device, like.dtype)
        if key not in self._mask_cache:
            self._mask_cache = {key: outside_mask(height, width, self.patch_size, like.device, like.dtype)}
        return self._mask_cache[key]

    def project(self, linear_weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """1x1 projection over the channel dim 1 of x: (B, C, *S) -> (B, mid*heads, *S)."""
        return torch.einsum("oc,bc...->bo...", linear_weight, x) + bias.view(1, -1, *([1] * (x.ndim - 2)))

    def padded(self, t: torch.Tensor, groups: int) -> torch.Tensor:
        """A projection t (B, mid*heads*groups, H, W), channel order (c, head, group), zero-padded by
        k//2 and split as (B, mid, heads, groups, H + 2r, W + 2r)."""
        b, _, height, width = t.shape
        r = self.patch_size // 2
        return F.pad(t, (r, r, r, r)).view(b, self.mid_channels, self.num_heads, groups, height + 2 * r, width + 2 * r)

    def _windows(self, padded: torch.Tensor, rows: slice) -> torch.Tensor:
        """k x k windows of the query rows ``rows`` as a strided view (B, mid, heads, groups, R, W, k, k)
        (``F.unfold``'s im2col is slow for many channels; slicing the padded rows first keeps the
        backward pass proportional to the chunk)."""
        k = self.patch_size
        return padded[:, :, :, :, rows.start : rows.stop + k - 1].unfold(4, k, 1).unfold(5, k, 1)

    def keys_of(self, padded: torch.Tensor, rows: slice) -> torch.Tensor:
        """Keys of the queries in image rows ``rows``: (B, heads, R*W, mid, groups*k*k)."""
        b, mid, heads, groups = padded.shape[:4]
        windows = self._windows(padded, rows).permute(0, 2, 4, 5, 1, 3, 6, 7)
        return windows.reshape(b, heads, -1, mid, groups * self.patch_size**2)

    def values_of(self, padded: torch.Tensor, rows: slice) -> torch.Tensor:
        """Values of the queries in image rows ``rows``: (B, heads, R*W, groups*k*k, mid)."""
        b, mid, heads, groups = padded.shape[:4]
        windows = self._windows(padded, rows).permute(0, 2, 4, 5, 3, 6, 7, 1)
        return windows.reshape(b, heads, -1, groups * self.patch_size**2, mid)

    def row_chunks(self, height: int, width: int, per_position: int) -> list[slice]:
        """Split the query rows so that each chunk's logits hold at most about ``chunk_elements`` numbers."""
        if self.chunk_elements <= 0:
            return [slice(0, height)]
        rows = max(1, min(height, self.chunk_elements // max(1, width * per_position)))
        return [slice(r, min(height, r + rows)) for r in range(0, height, rows)]

    def output(self, attended: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, heads, HW, |G|, mid) -> (B, C_out, |G|, H, W) through ``wout`` (channel order (c, head))."""
        b, _, hw, n, _ = attended.shape
        flat = attended.permute(0, 3, 2, 4, 1).reshape(b, n, hw, self.mid_channels * self.num_heads)
        out = self.wout(flat)  # (B, |G|, HW, C_out)
        return out.permute(0, 3, 1, 2).reshape(b, self.out_channels, n, height, width)

    def dropout(self, probs: torch.Tensor) -> torch.Tensor:
        return F.dropout(probs, self.attention_dropout, self.training) if self.attention_dropout > 0 else probs

    # ---- fused kernels -------------------------------------------------------------------------------
    backend: Optional[str] = None  # per-layer choice of path (None: the process-wide one)

    def positional_table(self) -> torch.Tensor:
        """(|G|, k*k, 2p): row then column encodings, the spatial term's keys."""
        rows, cols = self.spatial_tables()
        return torch.cat([rows, cols], dim=-1)

    def fused_attention(
        self, backend: str, x: torch.Tensor, n_in: int, emb: torch.Tensor, idx: torch.Tensor
    ) -> Optional[torch.Tensor]:
        """Attention through a fused kernel: x (B, C_in, [G_in,] H, W), emb the group embedding
        (N, mid - P2) (N = 0: no group term), idx (V, G, M) -> (B, C_out, V, H, W) after ``wout``;
        ``None`` when the factorised normaliser underflows (the caller then runs eager)."""
        from gevit.layers.kernels import cpu

        qkv, bias = self.project_heads_first(x, n_in)
        b, _, heads, mid, n_in, height, width = qkv.shape
        ptab = self.positional_table().to(qkv.dtype)
        p_drop = self.attention_dropout if self.training else 0.0
        # two 31-bit seeds from torch's generator: manual_seed makes the in-kernel dropout reproducible
        seeds = tuple(int(s) for s in torch.randint(0, 2**31 - 1, (2,))) if p_drop > 0 else (0, 0)
        try:
            if backend == "cpu":
                out = cpu.FusedAttention.apply(
                    qkv, bias, ptab, emb.to(qkv.dtype).contiguous(), idx, self.patch_size, p_drop, seeds
                )
            else:
                from gevit.layers.kernels import triton_attention

                q, k, v = (qkv + bias.view(1, 3, heads, mid, 1, 1, 1)).unbind(1)
                p2 = ptab.shape[-1]
                if emb.shape[0]:  # group scores q_g . E(i) for every embedding i (the kernel gathers them)
                    qe = torch.einsum("bhcgyx,nc->bhgnyx", q[:, :, p2:], emb)
                else:
                    qe = qkv.new_zeros(b, heads, 1, 1, height, width)
                out = triton_attention.fused_attention(q, k, v, ptab, qe, idx, self.patch_size, p_drop, seeds)
        except cpu.NormaliserUnderflow as error:
            log.warning("GE-ViT attention: %s in %s; this call runs on the eager path", error, type(self).__name__)
            return None
        n_out = out.shape[3]  # (B, heads, mid, V, H, W): channels in (head, c) order
        # one batched product with the weight broadcast over the batch: no layout copies forward or backward
        weight = self._heads_first_columns(self.wout.weight).expand(b, -1, -1)
        flat = torch.baddbmm(self.wout.bias.view(1, -1, 1), weight, out.reshape(b, heads * mid, -1))
        return flat.view(b, self.out_channels, n_out, height, width)

    def _heads_first_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """Rows of a projection (mid*heads, C) in (c, head) order -> (head, c) order."""
        return weight.view(self.mid_channels, self.num_heads, -1).transpose(0, 1).reshape(weight.shape)

    def _heads_first_columns(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.view(-1, self.mid_channels, self.num_heads).transpose(1, 2).reshape(weight.shape)

    def project_heads_first(self, x: torch.Tensor, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        """q (scaled by 1/sqrt(C_in)), k, v of x (B, C_in, [G,] H, W) without their biases as one
        (B, 3, heads, mid, G_in, H, W) tensor, and the biases (3, heads, mid): one batched matmul for the
        three projections, rows reordered so that its output needs no transpose (the CPU kernel reads it
        as it is and adds the biases while it copies each head)."""
        b, c = x.shape[:2]
        height, width = x.shape[-2:]
        scale = 1.0 / math.sqrt(c)
        weight = torch.cat(
            [
                self._heads_first_rows(self.query.weight) * scale,
                self._heads_first_rows(self.key.weight),
                self._heads_first_rows(self.value.weight),
            ]
        )
        bias = torch.cat(
            [
                self._heads_first_rows(self.query.bias.view(-1, 1)).view(-1) * scale,
                self._heads_first_rows(self.key.bias.view(-1, 1)).view(-1),
                self._heads_first_rows(self.value.bias.view(-1, 1)).view(-1),
            ]
        )
        qkv = torch.bmm(weight.expand(b, -1, -1), x.reshape(b, c, -1))
        return (
            qkv.view(b, 3, self.num_heads, self.mid_channels, n_in, height, width),
            bias.view(3, self.num_heads, self.mid_channels),
        )

    def _fused_index(self, make, device) -> torch.Tensor:
        """The (V, G, M) group-embedding indices as int32 on ``device`` (cached)."""
        cached = getattr(self, "_fused_idx", None)
        if cached is None or cached.device != device:
            cached = self._fused_idx = make().to(device=device, dtype=torch.int32).contiguous()
        return cached


class LiftingSelfAttention(_GroupAttentionBase):
    """Lifting self-attention: (B, C_in, H, W) -> (B, C_out, |G|, H, W).

    Equivariance (encoding ``gevit`` or ``gsanet``, both exact here): for u a multiple of 90 degrees
    (or a mirror, for E(2) groups), ``layer(u . x) = u . layer(x)`` with the action of
    :meth:`gevit.groups.Group.act_on_feature_map` (group axis ``g -> u g`` for ``gevit``).
    ``q`` is split into a row half and a column half for the positional term (mid_channels must be even).
    """

    def __init__(
        self,
        group,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        num_heads: int,
        patch_size: Optional[int],
        image_size: int,
        attention_dropout: float = 0.0,
        encoding: str = "gevit",
    ):
        if mid_channels % 2:
            raise ValueError(f"the lifting layer needs an even mid_channels, got {mid_channels}")
        super().__init__(
            group,
            in_channels,
            mid_channels,
            out_channels,
            num_heads,
            patch_size,
            image_size,
            attention_dropout,
            encoding,
            pos_channels=mid_channels // 2,
        )
        self.query = nn.Linear(in_channels, mid_channels * num_heads)
        self.key = nn.Linear(in_channels, mid_channels * num_heads)
        self.value = nn.Linear(in_channels, mid_channels * num_heads)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if not return_attention:
            backend = select_backend(x, self.backend)
            if backend != "eager":
                out = self._forward_fused(x, backend)
                if out is not None:
                    return out
        return self.forward_eager(x, return_attention)

    def _forward_fused(self, x: torch.Tensor, backend: str) -> Optional[torch.Tensor]:
        b, _, height, width = x.shape
        n = self.group.order
        idx = self._fused_index(lambda: torch.zeros(n, 1, 1, dtype=torch.int32), x.device)
        return self.fused_attention(backend, x, 1, x.new_zeros(0, 0), idx)  # no group term

    def forward_eager(self, x: torch.Tensor, return_attention: bool = False):
        """The reference path (materialises the logits chunk by chunk)."""
        b, c, height, width = x.shape
        hw, heads, mid, n = height * width, self.num_heads, self.mid_channels, self.group.order
        # every logit term is linear in q, so the 1/sqrt(C_in) scale is applied to q once
        q = self.project(self.query.weight, self.query.bias, x).reshape(b, mid, heads, hw).permute(0, 2, 3, 1)
        q = q / math.sqrt(c)
        k_windows = self.padded(self.project(self.key.weight, self.key.bias, x), 1)
        v_windows = self.padded(self.project(self.value.weight, self.value.bias, x), 1)
        mask = self.mask(height, width, x)  # (HW, k2): -inf for neighbours outside the image
        rows, cols = self.spatial_tables()  # (|G|, k2, p)
        p = self.pos_channels
        row_table, col_table = rows.reshape(-1, p).T, cols.reshape(-1, p).T
        outputs, all_probs = [], []
        for chunk in self.row_chunks(height, width, b * heads * n * self.patch_size**2):
            positions = slice(chunk.start * width, chunk.stop * width)
            qc = q[:, :, positions]
            content = (qc.unsqueeze(-2) @ self.keys_of(k_windows, chunk)).squeeze(-2) + mask[positions]
            position = qc[..., :p] @ row_table + qc[..., p:] @ col_table  # (B, h, P, |G|*k2)
            logits = position.view(b, heads, qc.shape[2], n, -1) + content.unsqueeze(3)
            probs = softmax_(logits)  # (B, heads, P, |G|, k2)
            outputs.append(self.dropout(probs) @ self.values_of(v_windows, chunk))  # (B, heads, P, |G|, mid)
            if return_attention:
                all_probs.append(probs)
        attended = torch.cat(outputs, dim=2)
        probs = torch.cat(all_probs, dim=2) if return_attention else None
        out = self.output(attended, height, width)
        return (out, probs) if return_attention else out


class GroupSelfAttention(_GroupAttentionBase):
    """Group self-attention: (B, C_in, |G|, H, W) -> (B, C_out, |G|, H, W).

    ``q`` is split into row (mid//3), column (mid//3) and group (the rest) parts for the positional
    terms. Equivariant for ``encoding="gevit"`` (see the module docstring); ``gsanet`` is not exactly.
    """

    def __init__(
        self,
        group,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        num_heads: int,
        patch_size: Optional[int],
        image_size: int,
        attention_dropout: float = 0.0,
        encoding: str = "gevit",
    ):
        super().__init__(
            group,
            in_channels,
            mid_channels,
            out_channels,
            num_heads,
            patch_size,
            image_size,
            attention_dropout,
            encoding,
            pos_channels=mid_channels // 3,
        )
        self.group_channels = mid_channels - 2 * self.pos_channels
        self.group_embedding = nn.Embedding(self.group.order, self.group_channels)
        self.query = nn.Linear(in_channels, mid_channels * num_heads)
        self.key = nn.Linear(in_channels, mid_channels * num_heads)
        self.value = nn.Linear(in_channels, mid_channels * num_heads)
        idx = group_embedding_indices(self.group, self.encoding)
        self.register_buffer("group_indices", idx, persistent=False)
        self.register_buffer(
            "query_element", torch.arange(self.group.order).view(1, -1, 1).expand_as(idx).clone(), persistent=False
        )

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        if x.ndim != 5 or x.shape[2] != self.group.order:
            raise ValueError(
                f"expected (B, C, {self.group.order}, H, W) inputs ({self.group.name}), got {tuple(x.shape)}"
            )
        if not return_attention:
            backend = select_backend(x, self.backend)
            if backend != "eager":
                out = self._forward_fused(x, backend)
                if out is not None:
                    return out
        return self.forward_eager(x, return_attention)

    def _forward_fused(self, x: torch.Tensor, backend: str) -> Optional[torch.Tensor]:
        idx = self._fused_index(lambda: self.group_indices, x.device)
        return self.fused_attention(backend, x, x.shape[2], self.group_embedding.weight, idx)

    def forward_eager(self, x: torch.Tensor, return_attention: bool = False):
        """The reference path (materialises the logits chunk by chunk)."""
        b, c, n, height, width = x.shape
        if n != self.group.order:
            raise ValueError(f"expected a group axis of size {self.group.order} ({self.group.name}), got {n}")
        hw, heads, mid = height * width, self.num_heads, self.mid_channels
        k2 = self.patch_size**2
        q = self.project(self.query.weight, self.query.bias, x).reshape(b, mid, heads, n, hw).permute(0, 2, 4, 3, 1)
        q = q / math.sqrt(c)  # every logit term is linear in q
        k_windows = self.padded(self.project(self.key.weight, self.key.bias, x).reshape(b, -1, height, width), n)
        v_windows = self.padded(self.project(self.value.weight, self.value.bias, x).reshape(b, -1, height, width), n)
        mask = self.mask(height, width, x).view(hw, 1, 1, 1, k2)  # -inf for neighbours outside the image
        rows, cols = self.spatial_tables()  # (V, k2, p)
        p = self.pos_channels
        row_table, col_table = rows.reshape(-1, p).T, cols.reshape(-1, p).T
        group_table = self.group_embedding.weight.T
        outputs, all_probs = [], []
        for chunk in self.row_chunks(height, width, b * heads * n * n * n * k2):
            positions = slice(chunk.start * width, chunk.stop * width)
            qc = q[:, :, positions]  # (B, h, P, G, mid)
            count = qc.shape[2]
            content = (qc @ self.keys_of(k_windows, chunk)).view(b, heads, count, 1, n, n, k2)
            content = content + mask[positions].unsqueeze(0).unsqueeze(0)  # (B, h, P, 1, G, M, k2)
            spatial = qc[..., :p] @ row_table + qc[..., p : 2 * p] @ col_table  # (B, h, P, G, V*k2)
            spatial = spatial.view(b, heads, count, n, n, 1, k2).transpose(3, 4)  # (B, h, P, V, G, 1, k2)
            group_scores = qc[..., 2 * p :] @ group_table  # (B, h, P, G, N)
            group_term = group_scores[:, :, :, self.query_element, self.group_indices]  # (B, h, P, V, G, M)
            logits = content + spatial  # (B, h, P, V, G, M, k2)
            logits += group_term.unsqueeze(-1)  # in place: the full-size tensor is allocated once
            probs = softmax_(logits.flatten(-2))  # (B, h, P, V, G, M*k2)
            summed = probs.sum(4)  # the output at v sums over the query elements g
            outputs.append(self.dropout(summed) @ self.values_of(v_windows, chunk))  # (B, h, P, V, mid)
            if return_attention:
                all_probs.append(probs)
        attended = torch.cat(outputs, dim=2)
        probs = torch.cat(all_probs, dim=2) if return_attention else None
        out = self.output(attended, height, width)
        return (out, probs) if return_attention else out
