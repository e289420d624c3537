"""Shared by the post-hoc tests: the method and backbone lists (the conf folders are the lists), a small
non-invariant backbone, aggregators and wrappers built as the configs build them, and invariance errors."""

from __future__ import annotations

import functools
from pathlib import Path

import hydra
import pytest
import timm
import torch
import torch.nn as nn

from gevit.groups import get_group
from gevit.posthoc import vit_backbone
from lightning_modules import PostHocClassifier
from runkit.posthoc_methods import aggregator_catalog, aggregator_config
from tests.support.compose import CONF_DIR, TINY_VIT

REPO = Path(__file__).resolve().parents[2]
# The folders are the lists: every method and backbone the configs offer is tested.
CATALOG = aggregator_catalog()
AGGREGATORS = list(CATALOG)
LEARNED = {name for name, cls in CATALOG.items() if cls.learned}
BACKBONES = sorted(p.stem for p in (CONF_DIR / "model" / "backbone").glob("*.yaml"))
EXACT_GROUPS = ["c4", "flip", "d4"]
MNIST = dict(num_classes=10, in_channels=1, image_size=28, input_mean=(0.1307,), input_std=(0.3081,))
# A deliberately non-invariant random backbone, without dropout so that training-mode forwards are
# deterministic.
TINY_BACKBONE = functools.partial(vit_backbone, embed_dim=16, depth=1, num_heads=2, mlp_hidden_dim=32, dropout=0.0)
TINY_BACKBONE_OVERRIDES = ["model/backbone=vit"] + [o.replace("model.net.", "model.backbone.") for o in TINY_VIT]
# Small widths keep the tests fast; no dropout (training-mode forwards must be deterministic to compare).
SMALL_OPTIONS = {
    "hidden_dim": 8,
    "attn_dim": 8,
    "depth": 1,
    "num_heads": 2,
    "mlp_hidden_dim": 16,
    "dropout": 0.0,
    "width": 2,
    "kernel_size": 3,
}


def aggregator(name: str, **options):
    """The partial of conf/model/aggregator/<name>.yaml with the small options it has, and ``options``."""
    config = aggregator_config(name)
    config.update({k: v for k, v in SMALL_OPTIONS.items() if config.get(k) is not None})
    config.update(options)
    return hydra.utils.instantiate(config)


def regimes_of(name: str) -> list[str]:
    return ["aggregator_only", "mlp", "backbone_only", "full"] if name in LEARNED else ["zero_shot", "mlp", "full"]


def make(
    name: str = "mean", group: str = "p4", regime: str = "zero_shot", backbone=None, data=MNIST, **options
) -> PostHocClassifier:
    model = PostHocClassifier(
        backbone=backbone or TINY_BACKBONE, aggregator=aggregator(name, **options), group=group, regime=regime, **data
    )
    with torch.no_grad():  # move learned aggregators away from their mean-like initialisation
        for p in model.net.aggregator.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def generators(group_name: str) -> list[int]:
    """Indices of generators of the group: invariance under them is invariance under the whole group."""
    group = get_group(group_name)
    return [group.index((1, 0))] * (group.num_rotations > 1) + [group.index((0, 1))] * group.mirror


def worst_invariance_error(model, images: torch.Tensor, group_name: str) -> float:
    """The largest relative change of the logits under the group's generators."""
    group = get_group(group_name)
    with torch.no_grad():
        reference = model(images)
        return max(relative_error(model(group.act_on_images(images, i)), reference) for i in generators(group_name))


class PooledCNN(nn.Module):
    """A tiny CNN with timm's API whose read-out depends on position: ``attention`` (timm's AttentionPool2d
    with a learned positional embedding, as CLIP's RN50) or ``flatten`` (the map flattened into a Linear)."""

    def __init__(self, pooling: str, num_classes: int = 10, in_chans: int = 1, size: int = 16, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
        )
        if pooling == "attention":
            self.pool = timm.layers.AttentionPool2d(width, feat_size=size // 4, num_heads=2, head_dim=4)
            self.num_features = width
        else:
            self.pool = nn.Flatten()
            self.num_features = width * (size // 4) ** 2
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.stem(x)

    def forward_head(self, x, pre_logits: bool = False):
        embedding = self.pool(x)
        return embedding if pre_logits else self.fc(embedding)

    def get_classifier(self):
        return self.fc


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
