"""Rotation sweeps: a classifier's class probabilities for an image turned through a list of angles."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from gevit.rotations import rotate


def angles_every(step_deg: float) -> list[float]:
    """0, step, 2*step, ... below 360 degrees."""
    if step_deg <= 0:
        raise ValueError(f"the angle step must be positive, got {step_deg}")
    count = int(torch.arange(0.0, 360.0, step_deg, dtype=torch.float64).numel())
    return [float(step_deg * i) for i in range(count)]


def rotated_copies(image: torch.Tensor, angles: Sequence[float]) -> torch.Tensor:
    """(1, C, H, W) -> (A, C, H, W): counter-clockwise rotations (exact for multiples of 90, else bilinear,
    zero padding: :func:`gevit.rotations.rotate`)."""
    return torch.cat([rotate(image, float(angle)) for angle in angles])


@torch.no_grad()
def predict_probabilities(
    classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Images (N, C, H, W) -> class probabilities (N, K) of ``classifier`` (images -> logits), in batches."""
    return torch.cat([classifier(chunk).softmax(-1) for chunk in images.split(batch_size)])


def rotation_sweep(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    angles: Sequence[float],
    batch_size: int = 64,
) -> torch.Tensor:
    """Class probabilities (A, K) of ``classifier`` on ``image`` (1, C, H, W) rotated by each angle."""
    return predict_probabilities(classifier, rotated_copies(image, angles), batch_size)
