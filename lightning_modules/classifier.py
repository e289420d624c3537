"""A LightningModule around any classifier network of :mod:`gevit`."""
from __future__ import annotations

import torch
import torch.nn as nn

from lightning_modules.base import BaseClassifierModule


class ImageClassifier(BaseClassifierModule):
    """Train a network end to end: ``net`` maps normalised images (B, C, H, W) to logits (B, K).

    ``net`` is any ``nn.Module`` (in configs, a ``gevit`` model built by Hydra). All other arguments
    are those of :class:`BaseClassifierModule`.
    """

    def __init__(self, net: nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.net = net

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
