"""The GE-ViT / GSA-Nets family: a GroupTransformer trained end to end."""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import torch

from gevit.models.group_transformer import GroupTransformer, load_official_weights
from lightning_modules.base import BaseClassifierModule

log = logging.getLogger(__name__)


class GroupTransformerClassifier(BaseClassifierModule):
    """GE-ViT (``encoding="gevit"``) or GSA-Nets (``encoding="gsanet"``) as a LightningModule.

    The network options sit at the top of the model config so the command line reads
    ``model=gevit model.group=p8 model.patch_size=9``. ``init_from`` loads a state_dict saved by the
    official GE-ViT / GSA-Nets code (converted on the fly; see
    :func:`gevit.models.group_transformer.convert_official_state_dict`). ``forward(images)`` returns
    logits (B, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        group: str = "p4",
        patch_size: Union[int, str, None] = 5,
        encoding: str = "gevit",
        num_channels: int = 20,
        num_heads: int = 9,
        block_sizes: Sequence[int] = (2, 3),
        expansion_per_block: Union[int, Sequence[int]] = 1,
        crop_per_layer: Union[int, Sequence[int]] = (2, 0, 2, 1, 1),
        norm: str = "layer",
        activation: str = "swish",
        attention_dropout: float = 0.1,
        value_dropout: float = 0.1,
        input_dropout: float = 0.0,
        normalize_between_layers: bool = False,
        maxpool_after_last_block: bool = False,
        dropout_after_maxpool: float = 0.0,
        spatial_pooling: str = "sum",
        group_pooling: str = "max",
        whitening_scale: float = 1.41421356,
        init_from: Optional[str] = None,
        **base_kwargs,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **base_kwargs)
        self.net = GroupTransformer(
            group=group, in_channels=in_channels, num_classes=num_classes, image_size=image_size,
            num_channels=num_channels, num_heads=num_heads, block_sizes=list(block_sizes),
            expansion_per_block=expansion_per_block if isinstance(expansion_per_block, int) else list(expansion_per_block),
            crop_per_layer=crop_per_layer if isinstance(crop_per_layer, int) else list(crop_per_layer),
            patch_size=patch_size, encoding=encoding, norm=norm, activation=activation,
            attention_dropout=attention_dropout, value_dropout=value_dropout, input_dropout=input_dropout,
            normalize_between_layers=normalize_between_layers, maxpool_after_last_block=maxpool_after_last_block,
            dropout_after_maxpool=dropout_after_maxpool, spatial_pooling=spatial_pooling,
            group_pooling=group_pooling, whitening_scale=whitening_scale,
        )
        if init_from:
            load_official_weights(self.net, init_from)
            log.info("loaded official GE-ViT/GSA-Nets weights from %s", init_from)

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
