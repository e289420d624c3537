"""The |G| transformed copies ("views") of each image, and the inverse action on per-view feature maps.

Conventions are those of :mod:`gevit.groups`: element ``i = r + n*m`` of C_n / D_n mirrors (if ``m``) and then
rotates counter-clockwise by ``r * 360/n`` degrees. Multiples of 90 degrees and the mirror are exact pixel
permutations (``torch.rot90`` / ``torch.flip``); other angles are resampled with ``F.grid_sample``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from gevit.groups import Group, get_group

PADDINGS = ("zeros", "circular_mask")


def disk_mask(height: int, width: int) -> torch.Tensor:
    """(H, W) float mask, 1 on the pixels whose centre lies in the inscribed disk, 0 elsewhere.

    Symmetric under ``rot90`` and flips for square images, so masking commutes with the exact elements.
    """
    rows = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    cols = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    radius = min(height, width) / 2
    return ((rows[:, None] ** 2 + cols[None, :] ** 2) <= radius**2).float()


class GroupViews(nn.Module):
    """Images (B, C, H, W) -> views (B, |G|, C, H, W) with ``views[:, i] = g_i . x``.

    Args:
        group: a :class:`~gevit.groups.Group` or its name (``p4``, ``mz2``, ``p4m``, ``p8``, ``p16`` ...; aliases such as ``c4`` / ``d4`` too).
        interpolation: resampling for angles that are not multiples of 90 degrees (``bilinear``,
            ``nearest``, ``bicubic``).
        padding: ``zeros`` fills pixels rotated in from outside the image with the background;
            ``circular_mask`` additionally sets every pixel outside the inscribed disk to the background,
            before and after transforming, so that no view loses or gains corner content.
        background: per-channel value of an empty pixel in the images this module receives (C values;
            default 0). For normalised images pass ``-mean / std``: the group then acts exactly as on the
            raw images followed by normalisation.
    """

    def __init__(
        self,
        group: Group | str,
        interpolation: str = "bilinear",
        padding: str = "zeros",
        background: Optional[Sequence[float] | torch.Tensor] = None,
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.group = get_group(group)
        self.interpolation, self.padding = interpolation, padding
        background = torch.zeros(1) if background is None else torch.as_tensor(background, dtype=torch.float32)
        self.register_buffer("background", background.reshape(1, -1, 1, 1).float(), persistent=False)

    @property
    def order(self) -> int:
        return self.group.order

    def act(self, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Apply ``transform`` (a function of images whose empty pixels are 0, e.g. a rotation with zero
        padding) to ``images`` (B, C, H, W) the way the views are made: with the background taken out, inside
        the inscribed disk for ``circular_mask``, and put back. The result may have extra leading axes
        (the orbit's (B, |G|, C, H, W))."""
        centred = images - self.background
        if self.padding == "circular_mask":
            mask = disk_mask(*images.shape[-2:]).to(images)
            return transform(centred * mask) * mask + self.background
        return transform(centred) + self.background

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, |G|, C, H, W)."""
        return self.act(images, lambda centred: self.group.orbit(centred, interpolation=self.interpolation))

    def transform(self, images: torch.Tensor, elements: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) and element indices (B,) -> (B, C, H, W), image ``b`` transformed by ``g_{elements[b]}``:
        ``views(images)[b, elements[b]]``, but each image is transformed once (not |G| times)."""

        def each_by_its_element(centred: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(centred)
            for element in elements.unique().tolist():
                chosen = (elements == element).nonzero().squeeze(1)
                out[chosen] = self.group.act_on_images(centred[chosen], element, interpolation=self.interpolation)
            return out

        return self.act(images, each_by_its_element)

    def inverse_on_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Apply ``g_i^-1`` to the spatial axes of view ``i``: (B, |G|, C, h, w) -> (B, |G|, C, h, w).

        Exact for C4 / flip / D4 (square maps); interpolated with zero padding for other angles.
        """
        group = self.group
        return torch.stack(
            [
                group.act_on_images(maps[:, i], group.inverse(i), interpolation=self.interpolation)
                for i in range(self.order)
            ],
            dim=1,
        )

    def extra_repr(self) -> str:
        return (
            f"group={self.group.name}, order={self.order}, interpolation={self.interpolation}, padding={self.padding}"
        )
