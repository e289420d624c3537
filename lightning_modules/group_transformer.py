"""The GE-ViT / GSA-Nets family: a GroupTransformer trained end to end."""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from gevit.models.group_transformer import GroupTransformer, load_official_weights
from lightning_modules.base import BaseClassifierModule, plain_options

log = logging.getLogger(__name__)


class GroupTransformerClassifier(BaseClassifierModule):
    """GE-ViT (``encoding="gevit"``) or GSA-Nets (``encoding="gsanet"``) as a LightningModule.

    Every keyword of :class:`gevit.models.GroupTransformer` (``group``, ``patch_size``, ``encoding``,
    ``num_channels``, ...) sits at the top of the model config, so the command line reads
    ``model=gevit model.group=p8 model.patch_size=9``. ``init_from`` loads a state_dict saved by the
    official GE-ViT / GSA-Nets code (converted on the fly; see
    :func:`gevit.models.group_transformer.convert_official_state_dict`). ``forward(images)`` returns
    logits (B, num_classes).
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, init_from: Optional[str] = None,
                 input_mean: Sequence[float] = (0.0,), input_std: Sequence[float] = (1.0,),
                 optimizer: Optional[Callable] = None, scheduler: Optional[Callable] = None,
                 scheduler_interval: str = "epoch", label_smoothing: float = 0.0, **net_options):
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                         input_mean=input_mean, input_std=input_std, optimizer=optimizer, scheduler=scheduler,
                         scheduler_interval=scheduler_interval, label_smoothing=label_smoothing)
        self.net = GroupTransformer(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                                    **plain_options(net_options))
        if init_from:
            load_official_weights(self.net, init_from)
            log.info("loaded official GE-ViT/GSA-Nets weights from %s", init_from)

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
