"""Rotating image batches: exact for multiples of 90 degrees, interpolated otherwise.

Convention (shared by every part of gevit): a positive angle rotates the image **counter-clockwise**
as displayed (row 0 at the top), so ``rotate(x, 90) == torch.rot90(x, 1, dims=(-2, -1))`` and
``rotate(x, a)`` matches ``torchvision.transforms.v2.functional.rotate(x, a)`` up to interpolation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Interpolation = Literal["bilinear", "nearest", "bicubic"]
PaddingMode = Literal["zeros", "border", "reflection"]  # F.grid_sample's padding_mode (how outside pixels are filled)


def rotation_grid(
    batch: int, height: int, width: int, angle_deg: float | torch.Tensor, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) for ``F.grid_sample`` that rotates counter-clockwise by ``angle_deg``.

    ``angle_deg`` is a float (same angle for the batch) or a tensor of shape (B,).
    """
    angle = torch.as_tensor(angle_deg, device=device, dtype=dtype).reshape(-1) * (math.pi / 180.0)
    angle = angle.expand(batch)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    # affine_grid maps output coordinates (x right, y down) to input coordinates. With y pointing
    # down, this matrix turns the picture counter-clockwise as displayed, like torch.rot90(k=1).
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    return F.affine_grid(theta, [batch, 1, height, width], align_corners=False)


def rotate(
    images: torch.Tensor,
    angle_deg: float | torch.Tensor,
    interpolation: Interpolation = "bilinear",
    padding_mode: PaddingMode = "zeros",
) -> torch.Tensor:
    """Rotate ``images`` (B, C, H, W) counter-clockwise by ``angle_deg`` degrees.

    Multiples of 90 degrees (scalar angle) use ``torch.rot90`` and are exact; other angles resample
    with ``F.grid_sample`` (``align_corners=False``), filling outside pixels according to ``padding_mode`` (``F.grid_sample``'s name and values).
    A tensor of per-image angles (B,) always resamples.
    """
    if images.ndim != 4:
        raise ValueError(f"rotate expects (B, C, H, W), got shape {tuple(images.shape)}")
    if not torch.is_tensor(angle_deg):
        quarter_turns = angle_deg / 90.0
        if abs(quarter_turns - round(quarter_turns)) < 1e-9:
            return torch.rot90(images, int(round(quarter_turns)) % 4, dims=(-2, -1))
    b, _, h, w = images.shape
    grid = rotation_grid(
        b, h, w, angle_deg, device=images.device, dtype=images.dtype if images.is_floating_point() else torch.float32
    )
    return F.grid_sample(
        images, grid.to(images.dtype), mode=interpolation, padding_mode=padding_mode, align_corners=False
    )
