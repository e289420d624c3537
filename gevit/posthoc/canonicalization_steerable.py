"""Continuous (SO(2)) canonicalization: predict an angle, rotate the input once (no |G| views).

A steerable escnn network (``rot2dOnR2(N=-1)``) maps the image to a vector ``v(x) in R^2`` that turns with
it, ``v(R_a x) = R_a v(x)`` for every angle ``a``, and (when the views' group has a mirror) a scalar ``q(x)``
that does not. The canonical image is ``R_-theta(z) z`` with ``theta`` the angle of ``v(z)`` and ``z`` the
image or its mirror ``M x`` (``M`` the mirror of :mod:`gevit.groups`), whichever has the larger ``q``:
``t = q(x) - q(M x)`` changes sign exactly under the mirror (the two terms swap), so the choice does not
depend on whether the input came mirrored. The result is invariant to every rotation (and to the mirror),
and the backbone runs once on it. Mondal et al.'s steerable canonicalizer (equiadapt), with the mirror too.

**Exact C4 / D4 behaviour.** escnn's steerable kernels are sampled on the pixel grid, so ``v`` turns with a
quarter turn of the image only up to float rounding, and the angle of a rotated copy is off by that
rounding. The rotation is therefore made in two steps: the quarter turn ``k = round(theta / 90 deg)`` (and
the mirror) are read from a first pass and undone **exactly** (``torch.rot90`` / ``torch.flip``: the result
is the same pixels for every element of C4 / D4 applied to ``x``); a second pass on that image gives the
residual angle ``phi`` (within about 45 degrees of 0) and it is rotated by ``-phi`` (``model.interpolation``,
zero padding). So ``f(u x) = f(x)`` to float rounding for ``u`` in C4 / D4 (a decision falls the other way
only where ``theta`` is within rounding of an odd multiple of 45 degrees, or ``t`` of 0); other angles are
as invariant as a bilinear rotation and a steerable network sampled on a grid allow (measured in
docs/posthoc.md).

**Training.** The rotation is differentiable in ``phi``, so the task loss trains the network directly
(equiadapt's steerable canonicalizer; no estimator). The mirror choice is discrete: in training mode its
one-hot choice carries the straight-through gradient of ``softmax((t, -t) / T)`` (both candidates are
canonicalized; eval makes only the chosen one). The prior (``prior_weight``, upright training images)
pushes ``v`` towards angle 0 (``1 - cos theta``: equiadapt's mean squared distance of the rotation matrix to
the identity) and ``t`` towards keeping the image (``CE((t, -t) / T, identity)``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn

from gevit.escnn_utils import GeometricWrapper, deepcopy_module
from gevit.groups import Group, get_group
from gevit.posthoc.canonicalization import (
    Canonicalizer,
    CanonicalizerInput,
    check_canonicalizer_options,
    normalization_and_dropout,
)
from gevit.posthoc.views import GroupViews
from gevit.rotations import rotate

QUARTER = math.pi / 2


class SteerableOrientationNet(nn.Module):
    """Images (B, C, H, W) with background 0 -> ``(v (B, 2) or None, q (B,) or None)``: ``v`` a vector that
    turns with the image, ``v(R_a x) = R_a v(x)`` (present when ``group`` has rotations), ``q`` a scalar that
    does not, ``q(R_a x) = q(x)`` (present when it has a mirror; ``q(x) - q(M x)`` decides the mirror).

    :class:`CanonicalizerInput` (crop, resize, average-pooling), then ``depth`` escnn ``R2Conv`` layers of
    ``rot2dOnR2(N=-1)`` with "same" padding: trivial input fields -> ``width`` band-limited Fourier fields
    (rotation frequencies up to ``frequencies``; ReLU applied on a grid of rotations of each field) -> ... ->
    one frequency-1 vector field (and one scalar field), averaged over space.
    """

    def __init__(
        self,
        group: Group | str,
        in_channels: int,
        width: int = 8,
        depth: int = 3,
        kernel_size: int = 5,
        frequencies: int = 2,
        downsample: int = 2,
        normalization: str = "none",
        dropout: float = 0.0,
        input_crop: Optional[float] = None,
        input_size: Optional[int] = None,
    ):
        super().__init__()
        check_canonicalizer_options(width, depth, kernel_size, normalization, dropout)
        if isinstance(frequencies, bool) or not isinstance(frequencies, int) or frequencies < 1:
            raise ValueError(
                f"canonicalizer option frequencies={frequencies!r} (model.aggregator.frequencies): expected a "
                "positive integer (the highest rotation frequency of the hidden fields)"
            )
        self.group = get_group(group)
        self.rotations, self.mirror = self.group.num_rotations > 1, self.group.mirror
        if not (self.rotations or self.mirror):
            raise ValueError(f"group {self.group.name} has no rotation and no mirror: there is nothing to canonicalize")
        self.input = CanonicalizerInput(downsample, input_crop, input_size)
        space = gspaces.rot2dOnR2(N=-1, maximum_frequency=max(frequencies, 1))
        so2 = space.fibergroup
        outputs = [so2.irrep(1)] * self.rotations + [so2.trivial_representation] * self.mirror
        # the ReLU sees each Fourier field on a grid of rotations: a multiple of 4 above the Nyquist rate
        samples = 4 * math.ceil((2 * frequencies + 2) / 4)
        current = enn.FieldType(space, in_channels * [space.trivial_repr])
        layers = []
        for _ in range(depth - 1):
            relu = enn.FourierPointwise(
                space, width, so2.bl_irreps(frequencies), function="p_relu", type="regular", N=samples
            )
            layers.append(enn.R2Conv(current, relu.in_type, kernel_size, padding=kernel_size // 2))
            layers += normalization_and_dropout(relu.in_type, normalization, dropout, enn.IIDBatchNorm2d)
            layers.append(relu)
            current = relu.out_type
        layers.append(enn.R2Conv(current, enn.FieldType(space, outputs), kernel_size, padding=kernel_size // 2))
        self.net = GeometricWrapper(deepcopy_module(enn.SequentialModule(*layers)))

    def forward(self, images: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        out = self.net(self.input(images)).mean(dim=(-2, -1))
        return (out[:, :2] if self.rotations else None), (out[:, -1] if self.mirror else None)


def undo_quarter_turns(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Image ``b`` turned clockwise by ``turns[b]`` quarter turns (exact ``torch.rot90``)."""
    out = images.clone()
    for k in range(1, 4):
        chosen = (turns == k).nonzero().squeeze(1)
        if len(chosen):
            out[chosen] = torch.rot90(images[chosen], -k, dims=(-2, -1))
    return out


def angle(vectors: torch.Tensor) -> torch.Tensor:
    """(B, 2) -> (B,) radians, counter-clockwise."""
    return torch.atan2(vectors[:, 1], vectors[:, 0])


class SteerableCanonicalization(Canonicalizer):
    """Continuous canonicalization: ``logits(x) = backbone(R_-theta M^m x)`` with ``theta`` and ``m`` from a
    :class:`SteerableOrientationNet` (see the module docstring). ``forward(images (B, C, H, W), views) ->
    canonical images (B, C, H, W)`` makes no (B, |G|, ...) views: one rotation per image and one backbone call,
    whatever the views' group; the group says which symmetries are canonicalized (C_n, n > 1: every angle;
    D_n and flip: the mirror) and to which element ``predicted_elements`` rounds ``h*``.

    Args:
        group, in_channels: the facts of the wrapper;
        width, depth, kernel_size, frequencies, downsample, normalization (``none`` | ``batch``), dropout,
            input_crop, input_size: :class:`SteerableOrientationNet`;
        temperature: of the mirror choice's softmax (its gradient and prior);
        prior_weight: weight of the canonicalization prior on training images (0 = off).
    """

    summary = {
        "aggregated": "nothing: one canonical input R(-θ)M^m x, backbone run once",
        "weights": "angle θ of an escnn SO(2)-steerable vector; mirror m by q(x) - q(Mx), q a rotation-invariant scalar",
        "normalisation": "softmax((t, -t)/T) for the mirror's gradient",
        "estimator": "backprop through the rotation (straight-through for the mirror)",
        "difference": "Mondal (equiadapt's steerable): same idea, with the mirror too (equiadapt: rotations "
        "only); quarter turn and mirror undone exactly (rot90/flip) before the residual rotation, so C4/D4 "
        "invariance is exact; prior 1-cos θ (= equiadapt's MSE of the rotation matrix to the identity)",
    }

    def __init__(
        self,
        group: Group | str,
        in_channels: int,
        width: int = 8,
        depth: int = 3,
        kernel_size: int = 5,
        frequencies: int = 2,
        downsample: int = 2,
        normalization: str = "none",
        dropout: float = 0.0,
        input_crop: Optional[float] = None,
        input_size: Optional[int] = None,
        temperature: float = 1.0,
        prior_weight: float = 0.0,
    ):
        super().__init__()
        if temperature <= 0 or prior_weight < 0:
            raise ValueError(f"temperature must be positive and prior_weight >= 0, got {temperature}, {prior_weight}")
        self.group = get_group(group)
        self.orientation = SteerableOrientationNet(
            group,
            in_channels,
            width,
            depth,
            kernel_size,
            frequencies,
            downsample,
            normalization,
            dropout,
            input_crop,
            input_size,
        )
        self.temperature, self.prior_weight = temperature, prior_weight

    @property
    def rotations(self) -> bool:
        return self.orientation.rotations

    @property
    def mirror(self) -> bool:
        return self.orientation.mirror

    # ---- the canonical image -------------------------------------------------------------------------------
    def _passes(self, centred: torch.Tensor):
        """``(candidates, turns, residual, mirror logits)`` of images with background 0 (B, C, H, W).

        The candidates are the images (and, with a mirror, their mirror images after them: 2B), each with
        its quarter turns ``turns`` (first pass, no gradient) undone exactly; the second pass on them gives
        their residual angles ``residual`` (radians, with gradient) and the logits ``(t, -t) / T`` of
        keeping the image or its mirror, ``t = q(candidate of x) - q(candidate of M x)``. The candidates are
        the same pixels for every element of C4 / D4 applied to the images, so ``residual`` and ``t`` are
        too (``t`` changes sign under the mirror: the two terms swap).
        """
        candidates = torch.cat([centred, centred.flip(-1)]) if self.mirror else centred
        turns = None
        if self.rotations:
            with torch.no_grad():
                first, _ = self.orientation(candidates)
            turns = torch.round(angle(first) / QUARTER).long() % 4
            candidates = undo_quarter_turns(candidates, turns)
        vectors, scalars = self.orientation(candidates)
        residual = angle(vectors) if self.rotations else None
        mirror_logits = None
        if self.mirror:
            b = len(centred)
            t = scalars[:b] - scalars[b:]
            mirror_logits = torch.stack([t, -t], dim=-1) / self.temperature
        return candidates, turns, residual, mirror_logits

    @staticmethod
    def _mirror_choice(candidates: torch.Tensor, mirror_logits: torch.Tensor) -> torch.Tensor:
        """(B,) 0 = keep the image, 1 = its mirror: the larger logit; an exact tie (``q`` blind to the mirror,
        e.g. a one-layer network) goes to the candidate whose first differing pixel is smaller, a choice that
        does not depend on which of the two came in either."""
        b = len(mirror_logits)
        difference = (candidates[:b] - candidates[b:]).flatten(1)
        first = (difference != 0).to(torch.uint8).argmax(dim=1)
        tie_break = difference.gather(1, first[:, None]).squeeze(1) > 0
        t = mirror_logits[:, 0]
        return ((t < 0) | ((t == 0) & tie_break)).long()

    def canonicalize(self, centred: torch.Tensor, interpolation: str = "bilinear") -> torch.Tensor:
        """Images with background 0 (B, C, H, W) -> canonical images (B, C, H, W)."""
        candidates, _, residual, mirror_logits = self._passes(centred)
        if mirror_logits is not None and not (self.training and torch.is_grad_enabled()):
            choice = self._mirror_choice(candidates, mirror_logits)
            chosen = torch.arange(len(centred), device=centred.device) + len(centred) * choice
            candidates, residual, mirror_logits = candidates[chosen], residual[chosen] if self.rotations else None, None
        if residual is not None:
            candidates = rotate(candidates, -torch.rad2deg(residual), interpolation=interpolation)
        if mirror_logits is None:
            return candidates
        # training: both candidates, the choice one-hot in value with the gradient of the softmax
        soft = mirror_logits.softmax(dim=-1)
        y = F.one_hot(self._mirror_choice(candidates, mirror_logits), 2).to(soft) + soft - soft.detach()
        both = candidates.unflatten(0, (2, len(centred)))
        return (y.T.reshape(2, len(centred), *([1] * (centred.ndim - 1))) * both).sum(dim=0)

    def forward(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        return views.act(images, lambda centred: self.canonicalize(centred, views.interpolation))

    # ---- prior and accuracy ----------------------------------------------------------------------------------
    @staticmethod
    def _angles(turns: Optional[torch.Tensor], residual: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The whole angle ``theta`` (radians) of each candidate: its quarter turns plus the residual."""
        return None if residual is None else turns * QUARTER + residual

    def auxiliary_losses(self, images: torch.Tensor, views: GroupViews) -> dict[str, torch.Tensor]:
        if self.prior_weight == 0:
            return {}
        _, turns, residual, mirror_logits = self._passes(images - views.background)
        b, theta = len(images), self._angles(turns, residual)
        prior = torch.zeros((), device=images.device, dtype=images.dtype)
        if theta is not None:  # 1 - cos(theta) of the images themselves
            prior = prior + (1 - torch.cos(theta[:b])).mean()
        if mirror_logits is not None:  # keep the image, not its mirror
            prior = prior + F.cross_entropy(mirror_logits, torch.zeros(b, dtype=torch.long, device=images.device))
        return {"prior": self.prior_weight * prior}

    @torch.no_grad()
    def predicted_elements(self, images: torch.Tensor, views: GroupViews) -> torch.Tensor:
        """``h*`` rounded to the group: ``R_theta`` (element ``round(theta / (360/n))``) when the image is kept,
        ``M R_theta' = R_-theta' M`` when its mirror image (angle ``theta'``) is."""
        candidates, turns, residual, mirror_logits = self._passes(images - views.background)
        b, n = len(images), self.group.num_rotations
        mirrored = torch.zeros(b, dtype=torch.long, device=images.device)
        if mirror_logits is not None:
            mirrored = self._mirror_choice(candidates, mirror_logits)
        theta = self._angles(turns, residual)
        if theta is None:
            return n * mirrored
        if self.mirror:
            theta = theta[torch.arange(b, device=images.device) + b * mirrored]
        theta = torch.where(mirrored.bool(), -theta, theta)
        return torch.round(theta / (2 * math.pi / n)).long() % n + n * mirrored

    def extra_repr(self) -> str:
        return (
            f"level={self.level}, group={self.group.name}, rotations={self.rotations}, mirror={self.mirror}, "
            f"temperature={self.temperature}, prior_weight={self.prior_weight}"
        )
