"""Learning-rate schedules that need the run's length (filled in by BaseClassifierModule)."""

from __future__ import annotations

import math

import torch


def linear_warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int | None = None,
    warmup_fraction: float = 0.1,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of ``total_steps``, then a cosine decay to ``min_factor``.

    Meant to be stepped every batch (``scheduler_interval: step``); ``total_steps`` is the trainer's
    ``estimated_stepping_batches`` unless given. Unlike the original post-hoc PCam code, the cosine
    spans the whole run (it does not finish after ``epochs`` steps and oscillate).
    """
    if total_steps is None or total_steps <= 0:
        raise ValueError("linear_warmup_cosine needs total_steps > 0")
    warmup = max(1, int(round(warmup_fraction * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
