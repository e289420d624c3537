"""The one LightningModule of every end-to-end model: any classifier network of :mod:`gevit`, trained whole."""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn as nn

from lightning_modules.base import BaseClassifierModule

log = logging.getLogger(__name__)


class ImageClassifier(BaseClassifierModule):
    """Train a network end to end: ``net`` maps normalised images (B, C, H, W) to logits (B, K).

    ``net`` is any ``nn.Module``; in configs a ``gevit`` network with its own ``_target_`` (ViT, GE-ViT /
    GSA-Nets, hybrid, EqCvT, CvT, a torchvision ResNet), overridden as ``model.net.X``. ``init_from``
    loads weights saved by the network's original code before training, through the network's own
    ``load_official_weights(path)`` (GE-ViT / GSA-Nets: the official checkpoints). All other arguments
    are those of :class:`BaseClassifierModule`.
    """

    def __init__(self, net: nn.Module, init_from: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        if init_from:
            load = getattr(net, "load_official_weights", None)
            if load is None:
                raise ValueError(
                    f"model.init_from={init_from}: {type(net).__name__} has no official weights to "
                    "load (only networks with a load_official_weights method, e.g. GE-ViT)"
                )
            load(init_from)
            log.info("loaded the official weights of %s from %s", type(net).__name__, init_from)

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
