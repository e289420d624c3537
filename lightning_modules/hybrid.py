"""The hybrid ViT (invariant escnn / orbit-averaged patch stem -> GE-ViT on a small artificial image)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from gevit.escnn_utils import make_state_dict_mode_independent
from gevit.models.hybrid import HybridViT
from lightning_modules.base import BaseClassifierModule, plain_options


class HybridClassifier(BaseClassifierModule):
    """:class:`gevit.models.hybrid.HybridViT` as a LightningModule.

    Every keyword of :class:`~gevit.models.hybrid.HybridViT` sits at the top of the model config, like GE-ViT's: ``model=hybrid model.group=p4m
    model.stem=patch_embed model.patch_size=global``; ``group`` drives both the stem and GE-ViT. The escnn
    layers' state dict is made independent of train/eval mode (:mod:`gevit.escnn_utils`), so checkpoints
    saved at validation end load into a training model and the reverse. ``forward(images)`` returns logits.
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int,
                 input_mean: Sequence[float] = (0.0,), input_std: Sequence[float] = (1.0,),
                 optimizer: Optional[Callable] = None, scheduler: Optional[Callable] = None,
                 scheduler_interval: str = "epoch", label_smoothing: float = 0.0, **net_options):
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                         input_mean=input_mean, input_std=input_std, optimizer=optimizer, scheduler=scheduler,
                         scheduler_interval=scheduler_interval, label_smoothing=label_smoothing)
        self.net = HybridViT(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                             **plain_options(net_options))
        make_state_dict_mode_independent(self.net)  # already done by GeometricWrapper; idempotent

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
