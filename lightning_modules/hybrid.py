"""The hybrid ViT (invariant escnn / orbit-averaged patch stem -> GE-ViT on a small artificial image)."""
from __future__ import annotations

from typing import Sequence, Union

import torch

from gevit.escnn_utils import make_state_dict_mode_independent
from gevit.models.hybrid import HybridViT
from lightning_modules.base import BaseClassifierModule


class HybridClassifier(BaseClassifierModule):
    """:class:`gevit.models.hybrid.HybridViT` as a LightningModule.

    Network options sit at the top of the model config, like GE-ViT's: ``model=hybrid model.group=p4m
    model.stem=patch_embed model.patch_size=global``; ``group`` drives both the stem and GE-ViT. The escnn
    layers' state dict is made independent of train/eval mode (:mod:`gevit.escnn_utils`), so checkpoints
    saved at validation end load into a training model and the reverse. ``forward(images)`` returns logits.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        group: str = "p4",
        stem: str = "escnn",
        stem_channels: Sequence[int] = (8, 16),
        stem_kernel_size: Union[int, Sequence[int]] = (5, 3),
        downsample: str = "avg",
        pool_sigma: float = 0.66,
        embed_patch_size: int = 4,
        embed_dim: int = 16,
        patch_size: Union[int, str, None] = 5,
        encoding: str = "gevit",
        num_channels: int = 20,
        num_heads: int = 9,
        block_sizes: Sequence[int] = (4,),
        expansion_per_block: Union[int, Sequence[int]] = 1,
        crop_per_layer: Union[int, Sequence[int]] = 0,
        norm: str = "layer",
        activation: str = "swish",
        attention_dropout: float = 0.1,
        value_dropout: float = 0.1,
        input_dropout: float = 0.0,
        normalize_between_layers: bool = False,
        maxpool_after_last_block: bool = False,
        dropout_after_maxpool: float = 0.0,
        spatial_pooling: str = "mean",
        group_pooling: str = "max",
        whitening_scale: float = 1.41421356,
        **base_kwargs,
    ):
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **base_kwargs)
        listed = lambda v: v if isinstance(v, (int, str)) or v is None else list(v)  # noqa: E731 (ListConfig -> list)
        self.net = HybridViT(
            group=group, in_channels=in_channels, num_classes=num_classes, image_size=image_size, stem=stem,
            stem_channels=list(stem_channels), stem_kernel_size=listed(stem_kernel_size), downsample=downsample,
            pool_sigma=pool_sigma, embed_patch_size=embed_patch_size, embed_dim=embed_dim, patch_size=patch_size,
            num_channels=num_channels, num_heads=num_heads, block_sizes=list(block_sizes),
            expansion_per_block=listed(expansion_per_block), crop_per_layer=listed(crop_per_layer),
            encoding=encoding, norm=norm, activation=activation, attention_dropout=attention_dropout,
            value_dropout=value_dropout, input_dropout=input_dropout,
            normalize_between_layers=normalize_between_layers, maxpool_after_last_block=maxpool_after_last_block,
            dropout_after_maxpool=dropout_after_maxpool, spatial_pooling=spatial_pooling,
            group_pooling=group_pooling, whitening_scale=whitening_scale,
        )
        make_state_dict_mode_independent(self.net)  # already done by GeometricWrapper; idempotent

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
