"""Learned canonicalization (Kaba et al., ICML 2023; Mondal et al., NeurIPS 2023 — the ``equiadapt`` method).

A small network predicts the orientation ``h*(x)`` of the input, the input is transformed back to its
canonical orientation, and the backbone runs **once** on it (the |G|-view aggregators run it |G| times)::

    logits(x) = backbone(h*(x)^-1 . x),        h*(u x) = u h*(x)  for every u of the group

so ``h*(ux)^-1 (u x) = h*(x)^-1 x``: the logits are invariant. This module holds what every canonicalizer
shares (:class:`Canonicalizer`: the interface the wrapper and the training loop use; :class:`CanonicalizerInput`:
the optional crop / resize of the canonicalizer's input) and the discrete methods over the views' group:

* :class:`LearnedCanonicalization` (``canonicalization``): an escnn C_n/D_n-equivariant :class:`OrientationNet`
  gives orientation logits ``o(x) in R^|G|`` with ``o(g x)[g h] = o(x)[h]`` (regular representation) and
  ``h* = argmax_h o(x)[h]``. Exact for C4 / flip / D4 (``rot90`` / ``flip`` are pixel permutations and a
  float-rounding change of the logits cannot move an argmax), up to interpolation for C8 / C16.
* :class:`DiscreteCanonicalization`, its base, shared with the optimisation-based method
  (:mod:`gevit.posthoc.canonicalization_optimized`); the continuous SO(2)/O(2) method is
  :mod:`gevit.posthoc.canonicalization_steerable`.

Training a discrete canonicalizer: the argmax has no gradient, so it learns through a straight-through
estimator (forward with the hard one-hot choice, backward through ``softmax(o / T)``) or Gumbel-softmax (a
sampled hard choice; the training forward is then invariant in distribution only, eval is exact). The
straight-through gradient needs every view ``h^-1 x`` (``d canonical / d y_h``), so a training forward makes
the |G| views (image operations; the backbone still runs once); eval transforms each image once, by its
chosen element. The optional canonicalization prior (Mondal et al.) adds ``prior_weight * CE(o(x), identity)``
on the training images: it pushes upright training data to the identity, i.e. keeps a pretrained upright
backbone seeing upright images.

The logits' index is the element index of :mod:`gevit.groups` (``r + n*m``: mirror, then rotate
counter-clockwise by ``r*360/n`` degrees); escnn's regular representations of ``rot2dOnR2(n)``,
``flipRot2dOnR2(n)`` and ``flip2dOnR2()`` order their channels the same way (tested).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from escnn import nn as enn

from gevit.escnn_utils import GeometricWrapper, deepcopy_module
from gevit.groups import Group, get_group
from gevit.posthoc.aggregators.base import Aggregator
from gevit.posthoc.views import GroupViews

ESTIMATORS = ("straight_through", "gumbel")
NORMALIZATIONS = ("none", "batch")


def check_canonicalizer_options(
    width: int,
    depth: int,
    kernel_size: int,
    normalization: str = "none",
    dropout: float = 0.0,
    **positive: Optional[float],
) -> None:
    """One clear error naming the option (``model.aggregator.<name>``) for a canonicalizer's sizes."""

    def refuse(name: str, value, expected: str) -> None:
        raise ValueError(f"canonicalizer option {name}={value!r} (model.aggregator.{name}): expected {expected}")

    for name, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            refuse(name, value, "a positive integer")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        refuse("kernel_size", kernel_size, "a positive odd integer (same padding keeps the grid centred)")
    if normalization not in NORMALIZATIONS:
        refuse("normalization", normalization, f"one of {NORMALIZATIONS}")
    if not 0.0 <= dropout < 1.0:
        refuse("dropout", dropout, "a probability in [0, 1)")
    for name, value in positive.items():
        if value is not None and not value > 0:
            refuse(name, value, "a positive number or null")


def centred_side(side: int, ratio: float) -> int:
    """The side of a centre crop of ``ratio`` of ``side`` pixels, with the parity of ``side`` so that the crop
    is centred exactly (it then commutes with ``rot90`` and flips of square images)."""
    crop = min(side, max(1, round(ratio * side)))
    if (side - crop) % 2:
        crop += 1 if crop < side else -1
    return crop


class CanonicalizerInput(nn.Module):
    """What a canonicalization network sees: (B, C, H, W) -> (B, C, h, w), the backbone still sees the full image.

    In this order, each optional: a centre crop of ``input_crop`` of each side (large images whose borders
    carry no orientation, and whose corners a rotation loses anyway: equiadapt's ``input_crop_ratio``), a
    resize to ``input_size`` x ``input_size`` (bilinear with antialiasing: PCam's 96x96x3 -> e.g. 32x32,
    equiadapt's ``resize_shape``), an average-pooling by ``downsample`` (only when the sides are multiples of
    it). Every step commutes with ``rot90`` and flips of square images (a centred crop, a separable
    symmetric resampling, non-overlapping blocks), so the canonicalizer stays exactly equivariant.
    """

    def __init__(self, downsample: int = 2, input_crop: Optional[float] = None, input_size: Optional[int] = None):
        super().__init__()
        if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
            raise ValueError(
                f"canonicalizer option downsample={downsample!r} (model.aggregator.downsample): "
                "expected a positive integer"
            )
        if input_crop is not None and not 0 < input_crop <= 1:
            raise ValueError(
                f"canonicalizer option input_crop={input_crop!r} (model.aggregator.input_crop): expected a "
                "fraction of the side in (0, 1], or null"
            )
        if input_size is not None and (
            not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 1
        ):
            raise ValueError(
                f"canonicalizer option input_size={input_size!r} (model.aggregator.input_size): expected a "
                "positive number of pixels, or null"
            )
        self.downsample, self.input_crop, self.input_size = downsample, input_crop, input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_crop is not None and self.input_crop < 1:
            h, w = images.shape[-2:]
            ch, cw = centred_side(h, self.input_crop), centred_side(w, self.input_crop)
            top, left = (h - ch) // 2, (w - cw) // 2
            images = images[..., top : top + ch, left : left + cw]
        if self.input_size is not None and tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        if self.downsample > 1 and images.shape[-1] % self.downsample == 0 and images.shape[-2] % self.downsample == 0:
            images = F.avg_pool2d(images, self.downsample)
        return images

    def extra_repr(self) -> str:
        return f"downsample={self.downsample}, input_crop={self.input_crop}, input_size={self.input_size}"


class Canonicalizer(Aggregator):
    """Base class of the input-level methods: ``forward(images (B, C, H, W), views) -> canonical images
    (B, C, H, W)``, invariant under the group, on which the backbone then runs once.

    ``views`` is the wrapper's :class:`~gevit.posthoc.views.GroupViews`: the group, the images' background
    (pixels rotated in are background) and the interpolation / padding of non-exact transforms. Besides
    ``forward`` a canonicalizer gives

    - ``auxiliary_losses(images, views) -> {name: weighted loss}``: what it adds to the task loss on a
      training batch (the prior, a contrastive term; empty when nothing);
    - ``predicted_elements(images, views) -> (B,)`` element indices of the group: ``h*`` rounded to the group,
      so that ``predicted_elements(g x) = g predicted_elements(x)`` (the canonicalizer accuracy on known
      transformations: ``val/canon_acc``).
    """

    level = "input"
    learned = True

    def auxiliary_losses(self, images: torch.Tensor, views: GroupViews) -> dict[str, torch.Tensor]:
        return {}

    def predicted_elements(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        raise NotImplementedError


def normalization_and_dropout(field_type: enn.FieldType, normalization: str, dropout: float, batch_norm) -> list:
    """The escnn modules that follow a hidden convolution before its nonlinearity: ``batch_norm(field_type)``
    when ``normalization == "batch"`` (InnerBatchNorm for regular fields, IIDBatchNorm2d for Fourier fields),
    and field dropout (whole fields, equivariant for any field type) — in eval mode both are fixed maps."""
    modules = [batch_norm(field_type)] if normalization == "batch" else []
    return modules + ([enn.FieldDropout(field_type, p=dropout)] if dropout > 0 else [])


class OrientationNet(nn.Module):
    """Images (B, C, H, W) with background 0 -> orientation logits (B, |G|), equivariant:
    ``logits(g . x)[g h] = logits(x)[h]``.

    The image goes through :class:`CanonicalizerInput` (crop, resize, average-pooling by ``downsample``),
    then ``depth`` escnn ``R2Conv`` layers with ``kernel_size`` kernels and "same" padding (no striding,
    which would break exactness on even-sized grids): trivial input fields -> ``width`` regular fields
    (optionally batch-normalised, ReLU, optionally dropout) -> ... -> one regular field, whose |G| channels
    are averaged over space. Small by design: it should cost a fraction of one backbone call.
    """

    def __init__(
        self,
        group: Group | str,
        in_channels: int,
        width: int = 8,
        depth: int = 3,
        kernel_size: int = 5,
        downsample: int = 2,
        normalization: str = "none",
        dropout: float = 0.0,
        input_crop: Optional[float] = None,
        input_size: Optional[int] = None,
    ):
        super().__init__()
        check_canonicalizer_options(width, depth, kernel_size, normalization, dropout)
        self.input = CanonicalizerInput(downsample, input_crop, input_size)
        self.group = get_group(group)
        space = self.group.gspace()
        in_type = enn.FieldType(space, in_channels * [space.trivial_repr])
        hidden = enn.FieldType(space, width * [space.regular_repr])
        out_type = enn.FieldType(space, [space.regular_repr])
        layers, current = [], in_type
        for _ in range(depth - 1):
            layers.append(enn.R2Conv(current, hidden, kernel_size, padding=kernel_size // 2))
            layers += normalization_and_dropout(hidden, normalization, dropout, enn.InnerBatchNorm)
            layers.append(enn.ReLU(hidden))
            current = hidden
        layers.append(enn.R2Conv(current, out_type, kernel_size, padding=kernel_size // 2))
        # escnn shares its sampled bases between layers of the same types (a cache); a private copy keeps a
        # dtype move (``.double()``) of this network from changing every other one.
        self.net = GeometricWrapper(deepcopy_module(enn.SequentialModule(*layers)))

    @property
    def downsample(self) -> int:
        return self.input.downsample

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.input(images)).mean(dim=(-2, -1))


class DiscreteCanonicalization(Canonicalizer):
    """``h* = argmax_h o(x)[h]`` over the views' group, for orientation logits with
    ``o(g x)[g h] = o(x)[h]`` (:meth:`orientation_logits`, given by a subclass); canonical image ``h*^-1 x``.

    In training mode (with gradients) the choice is a one-hot ``y`` with the gradient of
    ``softmax(o / temperature)`` (``estimator="straight_through"``) or of a Gumbel-softmax sample
    (``"gumbel"``), and the canonical image is ``sum_h y_h h^-1 x``, equal in value to the chosen view;
    otherwise each image is transformed once, by its chosen ``h*^-1``.

    Args:
        group: the views' group; estimator, temperature: as above;
        prior_weight: weight of the canonicalization prior ``CE(o(x), identity)`` on training images
            (0 = off; use it when the training images are upright).
    """

    def __init__(
        self,
        group: Group | str,
        estimator: str = "straight_through",
        temperature: float = 1.0,
        prior_weight: float = 0.0,
    ):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if temperature <= 0 or prior_weight < 0:
            raise ValueError(f"temperature must be positive and prior_weight >= 0, got {temperature}, {prior_weight}")
        self.group = get_group(group)
        self.estimator, self.temperature, self.prior_weight = estimator, temperature, prior_weight

    def orientation_logits(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        """Images (B, C, H, W) as the wrapper sees them -> (B, |G|)."""
        raise NotImplementedError

    def best_elements(self, logits: torch.Tensor, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        """(B,) ``argmax_h o(x)[h]``, where an exact tie (a degenerate net: equal logits) is broken by the
        candidate canonical images ``h^-1 x`` themselves (the one with the smallest fixed linear fingerprint):
        the candidates of ``g x`` are those of ``x``, so the choice stays exactly invariant."""
        best = logits.argmax(dim=-1)
        tied = logits == logits.max(dim=-1, keepdim=True).values
        rows = tied.sum(dim=-1) > 1
        if not bool(rows.any()):
            return best
        inverses = self.group.inverses.to(images.device)
        with torch.no_grad():
            candidates = views(images[rows])[:, inverses].flatten(2)  # (b, |G|, C*H*W): h^-1 x
            pattern = torch.arange(candidates.shape[-1], device=images.device, dtype=candidates.dtype)
            fingerprint = (candidates * torch.sin(pattern * 0.7 + 0.3)).sum(dim=-1)
            fingerprint = fingerprint.masked_fill(~tied[rows], float("inf"))
        best = best.clone()
        best[rows] = fingerprint.argmin(dim=-1)
        return best

    def choice(self, logits: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
        """(B, |G|) -> one-hot (B, |G|) of ``best`` in value, with the estimator's gradient in training."""
        if self.estimator == "gumbel":
            return F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)
        soft = (logits / self.temperature).softmax(dim=-1)
        hard = F.one_hot(best, logits.shape[-1]).to(soft)
        return hard + soft - soft.detach()

    def forward(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        logits = self.orientation_logits(images, views)
        inverses = self.group.inverses.to(images.device)
        best = self.best_elements(logits.detach(), images, views)
        if self.training and torch.is_grad_enabled():
            y = self.choice(logits, best)
            inverse_views = views(images)[:, inverses]  # inverse_views[:, h] = h^-1 x
            return (y.reshape(*y.shape, *([1] * (inverse_views.ndim - 2))) * inverse_views).sum(dim=1)
        return views.transform(images, inverses[best])

    def prior_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """``prior_weight * CE(logits, identity)`` (element 0) for (B, |G|) orientation logits of training images."""
        identity = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return self.prior_weight * F.cross_entropy(logits, identity)

    def auxiliary_losses(self, images: torch.Tensor, views: GroupViews) -> dict[str, torch.Tensor]:
        if self.prior_weight == 0:
            return {}
        return {"prior": self.prior_loss(self.orientation_logits(images, views))}

    def predicted_elements(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        return self.best_elements(self.orientation_logits(images, views), images, views)

    def extra_repr(self) -> str:
        return (
            f"level={self.level}, group={self.group.name}, estimator={self.estimator}, "
            f"temperature={self.temperature}, prior_weight={self.prior_weight}"
        )


class LearnedCanonicalization(DiscreteCanonicalization):
    """Learned canonicalization: ``logits(x) = backbone(h*(x)^-1 . x)`` with ``h*`` the argmax of the orientation
    logits (B, |G|) of an equivariant :class:`OrientationNet` (see the module docstring). The backbone runs
    once per image.

    Args:
        group, in_channels: the facts of the wrapper;
        width, depth, kernel_size, downsample, normalization (``none`` | ``batch``), dropout, input_crop,
            input_size: :class:`OrientationNet` and :class:`CanonicalizerInput`;
        estimator, temperature, prior_weight: :class:`DiscreteCanonicalization`.
    """

    display_name = "canonicalization"
    summary = {
        "aggregated": "nothing: one canonical input h*⁻¹x, backbone run once",
        "weights": "one-hot argmax of an escnn C_n/D_n-equivariant orientation net",
        "normalisation": "softmax(o/T) for the gradient",
        "estimator": "straight-through (or Gumbel)",
        "difference": "Kaba/Mondal (equiadapt): same method; discrete orbit of the views' group "
        "(exact rot90/flip for C4/D4), prior as CE to the identity (Mondal: KL to a "
        "delta at the identity — the same up to a constant)",
    }

    def __init__(
        self,
        group: Group | str,
        in_channels: int,
        width: int = 8,
        depth: int = 3,
        kernel_size: int = 5,
        downsample: int = 2,
        normalization: str = "none",
        dropout: float = 0.0,
        input_crop: Optional[float] = None,
        input_size: Optional[int] = None,
        estimator: str = "straight_through",
        temperature: float = 1.0,
        prior_weight: float = 0.0,
    ):
        super().__init__(group, estimator, temperature, prior_weight)
        self.orientation = OrientationNet(
            group, in_channels, width, depth, kernel_size, downsample, normalization, dropout, input_crop, input_size
        )

    def orientation_logits(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        return self.orientation(images - views.background)
