"""Fused lifting/group self-attention in Triton (CUDA; on the CPU through Triton's interpreter, which
is how the tests check it: ``TRITON_INTERPRET=1`` must be set before triton is imported).

Same function and layouts as the CPU kernel (``csrc/group_attention.cpp``): one program per
(batch x head, image row, tile of ``BLOCK_X`` query positions, output element v). For each query
element g it runs the softmax over (m, j) in two passes over the keys (running max and normaliser, then
the probabilities), float32 accumulation, keys and values read as shifted rows of the zero-padded
projections (the key/value halo of a tile stays in cache), dropout on the summed probabilities from
Triton's Philox generator (``tl.rand``) keyed by (seed, element index) so that the backward
regenerates it. The backward recomputes the probabilities and accumulates the key/value/query
gradients with atomics (several programs touch the same key).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

try:  # triton is optional: without it (or without CUDA / the interpreter) the layers use another path
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Optional[str] = None
except Exception as error:  # pragma: no cover - depends on the installation
    triton = tl = None
    _IMPORT_ERROR = f"{type(error).__name__}: {error}"

BLOCK_X = 16


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> bool:
    return triton is not None and (device.type == "cuda" or (device.type == "cpu" and interpreting()))


def unavailable_reason() -> str:
    if triton is None:
        return f"triton cannot be imported ({_IMPORT_ERROR})"
    return "Triton runs on CUDA devices (or on the CPU with TRITON_INTERPRET=1)"


if triton is not None:

    @triton.jit
    def _logit(q_g, k_ptr, pt_ptr, qe_row, kbase, offs_x, offs_c, cmask, pmask, y, j, K, C, M_stride_c, H, W, Wp, RAD):
        """Logit of the neighbour j of every query in the tile for one (v, g, m): [BLOCK_X]."""
        a = j // K
        b = j - a * K
        kt = tl.load(
            k_ptr + kbase + (y + a) * Wp + offs_x[:, None] + b + offs_c[None, :] * M_stride_c,
            mask=cmask[None, :],
            other=0.0,
        ).to(tl.float32)
        content = tl.sum(q_g * kt, axis=1)
        pt = tl.load(pt_ptr + j * C + offs_c, mask=pmask, other=0.0).to(tl.float32)
        spatial = tl.sum(q_g * pt[None, :], axis=1)
        yy = y + a - RAD
        xx = offs_x + b - RAD
        valid = (offs_x >= W) | ((yy >= 0) & (yy < H) & (xx >= 0) & (xx < W))
        return tl.where(valid, content + spatial + qe_row, float("-inf"))

    @triton.jit
    def _keep(seed, bh, v, m, j, y, offs_x, V, M, K2, H, W, p_drop, scale, DROPOUT: tl.constexpr):
        if DROPOUT:
            index = ((((bh * V + v) * M + m) * K2 + j) * H + y) * W + offs_x
            return tl.where(tl.rand(seed, index) >= p_drop, scale, 0.0)
        else:
            return tl.full(offs_x.shape, 1.0, tl.float32)

    @triton.jit
    def _forward_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        pt_ptr,
        qe_ptr,
        idx_ptr,
        out_ptr,
        C,
        G,
        M,
        V,
        N,
        H,
        W,
        Wq,
        K,
        P2,
        p_drop,
        seed,
        BLOCK_X: tl.constexpr,
        BLOCK_C: tl.constexpr,
        DROPOUT: tl.constexpr,
    ):
        row = tl.program_id(0)  # bh * H + y
        x0 = tl.program_id(1) * BLOCK_X
        v = tl.program_id(2)
        bh = row // H
        y = row - bh * H
        RAD = K // 2
        K2 = K * K
        Hp = H + 2 * RAD
        Wp = Wq + 2 * RAD
        offs_x = x0 + tl.arange(0, BLOCK_X)
        offs_c = tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        pmask = offs_c < P2
        scale = 1.0 / (1.0 - p_drop)
        acc = tl.zeros((BLOCK_X, BLOCK_C), dtype=tl.float32)
        pt_v = pt_ptr + v * K2 * P2
        for g in range(G):
            q_g = tl.load(
                q_ptr + ((bh * C + offs_c[None, :]) * G + g) * H * Wq + y * Wq + offs_x[:, None],
                mask=cmask[None, :],
                other=0.0,
            ).to(tl.float32)
            run_max = tl.full((BLOCK_X,), -1.0e30, tl.float32)  # finite: exp(max_old - max_new) stays defined
            run_sum = tl.zeros((BLOCK_X,), dtype=tl.float32)
            for m in range(M):
                e_idx = tl.load(idx_ptr + (v * G + g) * M + m)
                qe_row = tl.load(qe_ptr + (((bh * G + g) * N + e_idx) * H + y) * Wq + offs_x).to(tl.float32)
                kbase = (bh * C * M + m) * Hp * Wp
                for j in range(K2):
                    logit = _logit(
                        q_g,
                        k_ptr,
                        pt_v,
                        qe_row,
                        kbase,
                        offs_x,
                        offs_c,
                        cmask,
                        pmask,
                        y,
                        j,
                        K,
                        P2,
                        M * Hp * Wp,
                        H,
                        W,
                        Wp,
                        RAD,
                    )
                    new_max = tl.maximum(run_max, logit)
                    run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(logit - new_max)
                    run_max = new_max
            inv = 1.0 / run_sum
            for m in range(M):
                e_idx = tl.load(idx_ptr + (v * G + g) * M + m)
                qe_row = tl.load(qe_ptr + (((bh * G + g) * N + e_idx) * H + y) * Wq + offs_x).to(tl.float32)
                kbase = (bh * C * M + m) * Hp * Wp
                for j in range(K2):
                    logit = _logit(
                        q_g,
                        k_ptr,
                        pt_v,
                        qe_row,
                        kbase,
                        offs_x,
                        offs_c,
                        cmask,
                        pmask,
                        y,
                        j,
                        K,
                        P2,
                        M * Hp * Wp,
                        H,
                        W,
                        Wp,
                        RAD,
                    )
                    prob = tl.exp(logit - run_max) * inv
                    prob = prob * _keep(seed, bh, v, m, j, y, offs_x, V, M, K2, H, W, p_drop, scale, DROPOUT)
                    a = j // K
                    b = j - a * K
                    vt = tl.load(
                        v_ptr + kbase + (y + a) * Wp + offs_x[:, None] + b + offs_c[None, :] * (M * Hp * Wp),
                        mask=cmask[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    acc += prob[:, None] * vt
        tl.store(
            out_ptr + ((bh * C + offs_c[None, :]) * V + v) * H * Wq + y * Wq + offs_x[:, None],
            acc.to(out_ptr.dtype.element_ty),
            mask=cmask[None, :],
        )

    @triton.jit
    def _backward_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        pt_ptr,
        qe_ptr,
        idx_ptr,
        dout_ptr,
        dq_ptr,
        dk_ptr,
        dv_ptr,
        dpt_ptr,
        dqe_ptr,
        C,
        G,
        M,
        V,
        N,
        H,
        W,
        Wq,
        K,
        P2,
        p_drop,
        seed,
        BLOCK_X: tl.constexpr,
        BLOCK_C: tl.constexpr,
        DROPOUT: tl.constexpr,
    ):
        row = tl.program_id(0)
        x0 = tl.program_id(1) * BLOCK_X
        v = tl.program_id(2)
        bh = row // H
        y = row - bh * H
        RAD = K // 2
        K2 = K * K
        Hp = H + 2 * RAD
        Wp = Wq + 2 * RAD
        MS = M * Hp * Wp  # channel stride of the padded keys/values
        offs_x = x0 + tl.arange(0, BLOCK_X)
        offs_c = tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        pmask = offs_c < P2
        scale = 1.0 / (1.0 - p_drop)
        pt_v = pt_ptr + v * K2 * P2
        d_out = tl.load(
            dout_ptr + ((bh * C + offs_c[None, :]) * V + v) * H * Wq + y * Wq + offs_x[:, None],
            mask=cmask[None, :],
            other=0.0,
        ).to(tl.float32)
        for g in range(G):
            q_off = ((bh * C + offs_c[None, :]) * G + g) * H * Wq + y * Wq + offs_x[:, None]
            q_g = tl.load(q_ptr + q_off, mask=cmask[None, :], other=0.0).to(tl.float32)
            run_max = tl.full((BLOCK_X,), -1.0e30, tl.float32)  # finite: exp(max_old - max_new) stays defined
            run_sum = tl.zeros((BLOCK_X,), dtype=tl.float32)
            for m in range(M):
                e_idx = tl.load(idx_ptr + (v * G + g) * M + m)
                qe_row = tl.load(qe_ptr + (((bh * G + g) * N + e_idx) * H + y) * Wq + offs_x).to(tl.float32)
                kbase = (bh * C * M + m) * Hp * Wp
                for j in range(K2):
                    logit = _logit(
                        q_g, k_ptr, pt_v, qe_row, kbase, offs_x, offs_c, cmask, pmask, y, j, K, P2, MS, H, W, Wp, RAD
                    )
                    new_max = tl.maximum(run_max, logit)
                    run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(logit - new_max)
                    run_max = new_max
            inv = 1.0 / run_sum
            # r = sum_{m,j} P dP, with dP = D (dO . val)
            r = tl.zeros((BLOCK_X,), dtype=tl.float32)
            for m in range(M):
                e_idx = tl.load(idx_ptr + (v * G + g) * M + m)
                qe_row = tl.load(qe_ptr + (((bh * G + g) * N + e_idx) * H + y) * Wq + offs_x).to(tl.float32)
                kbase = (bh * C * M + m) * Hp * Wp
                for j in range(K2):
                    logit = _logit(
                        q_g, k_ptr, pt_v, qe_row, kbase, offs_x, offs_c, cmask, pmask, y, j, K, P2, MS, H, W, Wp, RAD
                    )
                    prob = tl.exp(logit - run_max) * inv
                    a = j // K
                    b = j - a * K
                    vt = tl.load(
                        v_ptr + kbase + (y + a) * Wp + offs_x[:, None] + b + offs_c[None, :] * MS,
                        mask=cmask[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    keep = _keep(seed, bh, v, m, j, y, offs_x, V, M, K2, H, W, p_drop, scale, DROPOUT)
                    r += prob * keep * tl.sum(d_out * vt, axis=1)
            dq_acc = tl.zeros((BLOCK_X, BLOCK_C), dtype=tl.float32)
            for m in range(M):
                e_idx = tl.load(idx_ptr + (v * G + g) * M + m)
                qe_row = tl.load(qe_ptr + (((bh * G + g) * N + e_idx) * H + y) * Wq + offs_x).to(tl.float32)
                kbase = (bh * C * M + m) * Hp * Wp
                de = tl.zeros((BLOCK_X,), dtype=tl.float32)
                for j in range(K2):
                    logit = _logit(
                        q_g, k_ptr, pt_v, qe_row, kbase, offs_x, offs_c, cmask, pmask, y, j, K, P2, MS, H, W, Wp, RAD
                    )
                    prob = tl.exp(logit - run_max) * inv
                    a = j // K
                    b = j - a * K
                    kv_off = kbase + (y + a) * Wp + offs_x[:, None] + b + offs_c[None, :] * MS
                    vt = tl.load(v_ptr + kv_off, mask=cmask[None, :], other=0.0).to(tl.float32)
                    kt = tl.load(k_ptr + kv_off, mask=cmask[None, :], other=0.0).to(tl.float32)
                    keep = _keep(seed, bh, v, m, j, y, offs_x, V, M, K2, H, W, p_drop, scale, DROPOUT)
                    dprob = keep * tl.sum(d_out * vt, axis=1)
                    dlogit = prob * (dprob - r)
                    # values: the summed (dropped-out) probabilities times dO, one g at a time
                    tl.atomic_add(dv_ptr + kv_off, (prob * keep)[:, None] * d_out, mask=cmask[None, :])
                    tl.atomic_add(dk_ptr + kv_off, dlogit[:, None] * q_g, mask=cmask[None, :])
                    pt = tl.load(pt_v + j * P2 + offs_c, mask=pmask, other=0.0).to(tl.float32)
                    dq_acc += dlogit[:, None] * (kt + pt[None, :])
                    tl.atomic_add(
                        dpt_ptr + v * K2 * P2 + j * P2 + offs_c, tl.sum(dlogit[:, None] * q_g, axis=0), mask=pmask
                    )
                    de += dlogit
                tl.atomic_add(dqe_ptr + (((bh * G + g) * N + e_idx) * H + y) * Wq + offs_x, de)
            tl.atomic_add(dq_ptr + q_off, dq_acc, mask=cmask[None, :])


def _launch_geometry(q: torch.Tensor, k: torch.Tensor, ptab: torch.Tensor, qe: torch.Tensor):
    bh, c, g, h, wq = q.shape
    m = k.shape[2]
    kk = k.shape[3] - h + 1
    v, _, p2 = ptab.shape
    n = qe.shape[2]
    return dict(C=c, G=g, M=m, V=v, N=n, H=h, Wq=wq, K=kk, P2=p2), (bh * h, wq // BLOCK_X, v)


class TritonAttention(torch.autograd.Function):
    """Same contract as :class:`gevit.layers.kernels.cpu.FusedAttention` (padded layouts)."""

    @staticmethod
    def forward(ctx, q, k, v, ptab, qe, idx, width: int, p_drop: float, seed: int):
        dims, grid = _launch_geometry(q, k, ptab, qe)
        out = torch.empty(q.shape[0], dims["C"], dims["V"], dims["H"], dims["Wq"], dtype=q.dtype, device=q.device)
        block_c = triton.next_power_of_2(dims["C"])
        _forward_kernel[grid](
            q,
            k,
            v,
            ptab,
            qe,
            idx,
            out,
            W=width,
            p_drop=float(p_drop),
            seed=int(seed),
            BLOCK_X=BLOCK_X,
            BLOCK_C=block_c,
            DROPOUT=p_drop > 0,
            **dims,
        )
        ctx.save_for_backward(q, k, v, ptab, qe, idx)
        ctx.meta = (width, p_drop, seed)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, v, ptab, qe, idx = ctx.saved_tensors
        width, p_drop, seed = ctx.meta
        dims, grid = _launch_geometry(q, k, ptab, qe)
        f32 = dict(dtype=torch.float32, device=q.device)
        dq, dk, dv = torch.zeros(q.shape, **f32), torch.zeros(k.shape, **f32), torch.zeros(v.shape, **f32)
        dpt, dqe = torch.zeros(ptab.shape, **f32), torch.zeros(qe.shape, **f32)
        _backward_kernel[grid](
            q,
            k,
            v,
            ptab,
            qe,
            idx,
            grad.contiguous(),
            dq,
            dk,
            dv,
            dpt,
            dqe,
            W=width,
            p_drop=float(p_drop),
            seed=int(seed),
            BLOCK_X=BLOCK_X,
            BLOCK_C=triton.next_power_of_2(dims["C"]),
            DROPOUT=p_drop > 0,
            **dims,
        )
        cast = lambda t: t.to(q.dtype)  # noqa: E731
        return cast(dq), cast(dk), cast(dv), cast(dpt), cast(dqe), None, None, None, None


def fused_attention(q, k, v, ptab, qe, idx, patch_size: int, p_drop: float, seeds: tuple[int, int]) -> torch.Tensor:
    """q, k, v (B, heads, mid, G_in, H, W) (q scaled), ptab (V, k*k, P2), qe (B, heads, G, N, H, W),
    idx (V, G, M) int32 -> attended values (B, heads, mid, V, H, W)."""
    import torch.nn.functional as F

    b, heads, mid, n_in, height, width = q.shape
    r = patch_size // 2
    extra = -width % BLOCK_X
    qp = F.pad(q, (0, extra)).reshape(b * heads, mid, n_in, height, width + extra).contiguous()
    kp = (
        F.pad(k, (r, r + extra, r, r)).reshape(b * heads, mid, n_in, height + 2 * r, width + extra + 2 * r).contiguous()
    )
    vp = (
        F.pad(v, (r, r + extra, r, r)).reshape(b * heads, mid, n_in, height + 2 * r, width + extra + 2 * r).contiguous()
    )
    qe = F.pad(qe, (0, extra)).reshape(b * heads, *qe.shape[2:4], height, width + extra).contiguous()
    out = TritonAttention.apply(qp, kp, vp, ptab.contiguous(), qe, idx, width, p_drop, seeds[0])
    return out[..., :width].reshape(b, heads, mid, -1, height, width)
