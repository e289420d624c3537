"""Optimisation-based canonicalization (Kaba et al., ICML 2023; Mondal et al., NeurIPS 2023 — equiadapt's
``opt_group_equivariant``): any non-equivariant network, made into an exactly equivariant canonicalizer by
scoring the views.

A plain CNN ``phi`` maps each inverse view ``h^-1 x`` to a vector; its orientation logit is the cosine
similarity to a fixed reference vector ``r``::

    o(x)[h] = cos(phi(h^-1 x), r) / T,        o(g x)[g h] = cos(phi(h^-1 g^-1 g x), r) / T = o(x)[h]

so the logits permute as the regular representation whatever ``phi`` is, and ``h* = argmax o`` canonicalizes
exactly for C4 / flip / D4 (the views are pixel permutations). ``phi`` runs on the |G| views (small
images, a small CNN); the backbone still runs once. Training (:class:`DiscreteCanonicalization`):
straight-through on ``softmax(o)``, the prior ``CE(o(x), identity)`` on upright training images, and
Mondal et al.'s contrastive term, which pushes the vectors of an image's different views apart (mean
``|cos(phi(g x), phi(h x))|`` over ``g != h``) so that the views are told apart at all.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gevit.groups import Group
from gevit.posthoc.canonicalization import (
    CanonicalizerInput,
    DiscreteCanonicalization,
    check_canonicalizer_options,
)
from gevit.posthoc.views import GroupViews

READOUT_GRID = 4  # the CNN's map is average-pooled to READOUT_GRID x READOUT_GRID, then flattened


class VectorNet(nn.Module):
    """Images (B, C, H, W) with background 0 -> vectors (B, vector_size); no symmetry at all.

    :class:`CanonicalizerInput`, then ``depth`` ``Conv2d`` layers of ``width`` channels ("same" padding;
    optionally ``BatchNorm2d``; ReLU; optionally dropout), an adaptive average pooling to a 4x4 grid (so
    the read-out still knows where things are, and any image size fits), flattened into a ``Linear``.
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 16,
        depth: int = 3,
        kernel_size: int = 5,
        vector_size: int = 32,
        downsample: int = 2,
        normalization: str = "batch",
        dropout: float = 0.0,
        input_crop: Optional[float] = None,
        input_size: Optional[int] = None,
    ):
        super().__init__()
        check_canonicalizer_options(width, depth, kernel_size, normalization, dropout)
        if isinstance(vector_size, bool) or not isinstance(vector_size, int) or vector_size < 2:
            raise ValueError(
                f"canonicalizer option vector_size={vector_size!r} (model.aggregator.vector_size): expected an "
                "integer >= 2"
            )
        self.input = CanonicalizerInput(downsample, input_crop, input_size)
        layers, channels = [], in_channels
        for _ in range(depth):
            layers.append(nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2))
            if normalization == "batch":
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(READOUT_GRID), nn.Flatten())
        self.readout = nn.Linear(width * READOUT_GRID**2, vector_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(self.input(images)))


class OptimizedCanonicalization(DiscreteCanonicalization):
    """Optimisation-based canonicalization: ``h* = argmax_h cos(phi(h^-1 x), r)`` with ``phi`` a
    non-equivariant :class:`VectorNet` run on the (B, |G|, C, H, W) inverse views (see the module docstring);
    the backbone runs once, on ``h*^-1 x``.

    Args:
        group, in_channels: the facts of the wrapper;
        width, depth, kernel_size, vector_size, downsample, normalization (``batch`` | ``none``), dropout,
            input_crop, input_size: :class:`VectorNet`;
        learn_reference: train the reference vector ``r`` too (Mondal: ``learn_ref_vec``, off);
        contrast_weight: weight of the contrastive term on training images;
        estimator, temperature, prior_weight: :class:`DiscreteCanonicalization` (cosines divided by the
            temperature are the logits).
    """

    summary = {
        "aggregated": "nothing: one canonical input h*⁻¹x, backbone run once",
        "weights": "one-hot argmax over the views of cos(φ(h⁻¹x), r), φ any (non-equivariant) CNN",
        "normalisation": "softmax(cos/T) for the gradient",
        "estimator": "straight-through (or Gumbel)",
        "difference": "Kaba/Mondal (equiadapt's opt_group_equivariant): same scores; contrastive term on "
        "cosines (equiadapt: raw dot products, which shrinking φ minimises); pooled 4×4 read-out, any size",
    }

    def __init__(
        self,
        group: Group | str,
        in_channels: int,
        width: int = 16,
        depth: int = 3,
        kernel_size: int = 5,
        vector_size: int = 32,
        downsample: int = 2,
        normalization: str = "batch",
        dropout: float = 0.0,
        input_crop: Optional[float] = None,
        input_size: Optional[int] = None,
        learn_reference: bool = False,
        contrast_weight: float = 1.0,
        estimator: str = "straight_through",
        temperature: float = 0.1,
        prior_weight: float = 0.0,
    ):
        super().__init__(group, estimator, temperature, prior_weight)
        if contrast_weight < 0:
            raise ValueError(f"contrast_weight must be >= 0, got {contrast_weight}")
        self.vectors = VectorNet(
            in_channels,
            width,
            depth,
            kernel_size,
            vector_size,
            downsample,
            normalization,
            dropout,
            input_crop,
            input_size,
        )
        reference = F.normalize(torch.randn(vector_size), dim=0)
        if learn_reference:
            self.reference = nn.Parameter(reference)
        else:
            self.register_buffer("reference", reference)
        self.contrast_weight = contrast_weight

    def view_vectors(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        """(B, C, H, W) -> ``phi(h^-1 x)`` for every element h: (B, |G|, vector_size), one call on B·|G| views."""
        inverse_views = views(images)[:, self.group.inverses.to(images.device)] - views.background
        return self.vectors(inverse_views.flatten(0, 1)).unflatten(0, inverse_views.shape[:2])

    def _logits(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(vectors, self.reference.to(vectors), dim=-1) / self.temperature

    def orientation_logits(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        return self._logits(self.view_vectors(images, views))

    def auxiliary_losses(self, images: torch.Tensor, views: GroupViews) -> dict[str, torch.Tensor]:
        if self.prior_weight == 0 and self.contrast_weight == 0:
            return {}
        vectors = self.view_vectors(images, views)
        losses = {}
        if self.prior_weight > 0:
            losses["prior"] = self.prior_loss(self._logits(vectors))
        if self.contrast_weight > 0:  # mean |cos| between different views of the same image
            unit = F.normalize(vectors, dim=-1)
            similarity = (unit @ unit.transpose(1, 2)).abs()
            order = similarity.shape[-1]
            off_diagonal = similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)
            losses["contrast"] = self.contrast_weight * (off_diagonal / max(order * (order - 1), 1)).mean()
        return losses

    def extra_repr(self) -> str:
        return super().extra_repr() + f", contrast_weight={self.contrast_weight}"
