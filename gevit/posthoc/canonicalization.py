"""Learned canonicalization (Kaba et al., ICML 2023; Mondal et al., NeurIPS 2023 — the ``equiadapt`` method).

A small, exactly equivariant escnn network predicts the orientation of the input over the group, the input
is transformed back to its canonical orientation, and the backbone runs **once** on it (the |G|-view
aggregators run it |G| times)::

    o(x) = OrientationNet(x) in R^|G|,      o(g x)[g h] = o(x)[h]       (regular representation)
    h*(x) = argmax_h o(x)[h],               logits(x) = backbone(h*(x)^-1 . x)

Transforming the input by ``u`` gives ``h*(u x) = u h*(x)``, so ``h*(ux)^-1 (u x) = h*(x)^-1 x``: the
logits are invariant — exactly for C4 / flip / D4 (escnn's steerable kernels and ``rot90`` / ``flip``
are exact on the pixel grid, up to float rounding), up to interpolation for C8 / C16.

Training: the argmax has no gradient, so the canonicalizer learns through a straight-through estimator
(forward with the hard one-hot choice, backward through ``softmax(o / T)``) or Gumbel-softmax (a sampled
hard choice; the training forward is then invariant in distribution only, eval is exact). The optional
canonicalization prior (Mondal et al.) adds ``prior_weight * CE(o(x), identity)`` on the training images:
it pushes upright training data to the identity, i.e. keeps a pretrained upright backbone seeing upright
images.

The logits' index is the element index of :mod:`gevit.groups` (``r + n*m``: mirror, then rotate
counter-clockwise by ``r*360/n`` degrees); escnn's regular representations of ``rot2dOnR2(n)``,
``flipRot2dOnR2(n)`` and ``flip2dOnR2()`` order their channels the same way (tested).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn

from gevit.escnn_utils import GeometricWrapper, deepcopy_module
from gevit.groups import Group, get_group
from gevit.posthoc.aggregators.base import Aggregator

ESTIMATORS = ("straight_through", "gumbel")


def group_gspace(group: Group) -> gspaces.GSpace2D:
    """The escnn gspace whose fibre group is ``group`` (C_n, D_n or the mirror alone)."""
    n, mirror = group.num_rotations, group.mirror
    if not mirror:
        return gspaces.rot2dOnR2(n) if n > 1 else gspaces.trivialOnR2()
    return gspaces.flipRot2dOnR2(n) if n > 1 else gspaces.flip2dOnR2()


class OrientationNet(nn.Module):
    """Images (B, C, H, W) with background 0 -> orientation logits (B, |G|), equivariant:
    ``logits(g . x)[g h] = logits(x)[h]``.

    The image is first average-pooled by ``downsample`` (non-overlapping blocks, only when the side is a
    multiple of it, so rot90 / flips of the image permute the blocks exactly); then ``depth`` escnn
    ``R2Conv`` layers with ``kernel_size`` kernels and "same" padding (no striding, which would break
    exactness on even-sized grids): trivial input fields -> ``width`` regular fields (ReLU) -> ... -> one
    regular field, whose |G| channels are averaged over space. Small by design: it should cost a fraction
    of one backbone call.
    """

    def __init__(
        self,
        group: Group | str,
        in_channels: int,
        width: int = 8,
        depth: int = 3,
        kernel_size: int = 5,
        downsample: int = 2,
    ):
        super().__init__()
        if depth < 1 or kernel_size % 2 == 0 or downsample < 1:
            raise ValueError(
                f"OrientationNet needs depth >= 1, an odd kernel_size and downsample >= 1, got "
                f"{depth}, {kernel_size}, {downsample}"
            )
        self.downsample = downsample
        self.group = get_group(group)
        space = group_gspace(self.group)
        in_type = enn.FieldType(space, in_channels * [space.trivial_repr])
        hidden = enn.FieldType(space, width * [space.regular_repr])
        out_type = enn.FieldType(space, [space.regular_repr])
        layers, current = [], in_type
        for _ in range(depth - 1):
            layers += [enn.R2Conv(current, hidden, kernel_size, padding=kernel_size // 2), enn.ReLU(hidden)]
            current = hidden
        layers.append(enn.R2Conv(current, out_type, kernel_size, padding=kernel_size // 2))
        # escnn shares its sampled bases between layers of the same types (a cache); a private copy keeps a
        # dtype move (``.double()``) of this network from changing every other one.
        self.net = GeometricWrapper(deepcopy_module(enn.SequentialModule(*layers)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.downsample > 1 and images.shape[-1] % self.downsample == 0 and images.shape[-2] % self.downsample == 0:
            images = F.avg_pool2d(images, self.downsample)
        return self.net(images).mean(dim=(-2, -1))


class LearnedCanonicalization(Aggregator):
    """Learned canonicalization: ``logits(x) = backbone(h*(x)^-1 . x)`` with ``h*`` the argmax of an
    equivariant :class:`OrientationNet` (see the module docstring). The backbone runs once per image.

    ``forward(inverse_views (B, |G|, C, H, W), orientation_logits (B, |G|)) -> canonical images (B, C, H, W)``,
    where ``inverse_views[:, h] = h^-1 . x``. In training mode (with gradients) the choice is a one-hot
    ``y`` with the gradient of ``softmax(o / temperature)`` (``estimator="straight_through"``) or of a
    Gumbel-softmax sample (``"gumbel"``), and the canonical image is ``sum_h y_h h^-1 x``, equal in value to
    the chosen view; otherwise it is the chosen view itself.

    Args:
        group, in_channels: the facts of the wrapper; width, depth, kernel_size, downsample: :class:`OrientationNet`.
        prior_weight: weight of the canonicalization prior ``CE(o(x), identity)`` on training images
            (0 = off; use it when the training images are upright).
    """

    level = "input"
    learned = True
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
        estimator: str = "straight_through",
        temperature: float = 1.0,
        prior_weight: float = 0.0,
    ):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if temperature <= 0 or prior_weight < 0:
            raise ValueError(f"temperature must be positive and prior_weight >= 0, got {temperature}, {prior_weight}")
        self.orientation = OrientationNet(group, in_channels, width, depth, kernel_size, downsample)
        self.estimator, self.temperature, self.prior_weight = estimator, temperature, prior_weight

    def orientation_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) with background 0 -> (B, |G|)."""
        return self.orientation(images)

    def choice(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, |G|) -> one-hot (B, |G|) in value, with the estimator's gradient in training."""
        if self.estimator == "gumbel":
            return F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)
        soft = (logits / self.temperature).softmax(dim=-1)
        hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft)
        return hard + soft - soft.detach()

    def forward(self, inverse_views: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            y = self.choice(logits)
            return (y.reshape(*y.shape, *([1] * (inverse_views.ndim - 2))) * inverse_views).sum(dim=1)
        best = logits.argmax(dim=-1)
        return inverse_views[torch.arange(len(best), device=best.device), best]

    def prior_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """``prior_weight * CE(logits, identity)`` (element 0) for (B, |G|) orientation logits of training images."""
        identity = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return self.prior_weight * F.cross_entropy(logits, identity)

    def extra_repr(self) -> str:
        return (
            f"level={self.level}, group={self.orientation.group.name}, estimator={self.estimator}, "
            f"temperature={self.temperature}, prior_weight={self.prior_weight}"
        )
