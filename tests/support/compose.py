"""Compose the project's Hydra config in-process, as train.py would, with outputs under a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, open_dict

from runkit.config import CONF_DIR, compose  # noqa: F401  (CONF_DIR: the tests import it from here)

# Small, fast settings shared by pipeline tests: a tiny ViT and few batches.
TINY_VIT = [
    "model.net.embed_dim=16",
    "model.net.depth=1",
    "model.net.num_heads=2",
    "model.net.mlp_hidden_dim=32",
]

# A few hundred digits and a one-block ViT: each run takes seconds on 2 cores.
FAST = (
    ["model=vit"]
    + TINY_VIT
    + [  # the default model is the EqCvT main job: name the ViT
        "data.train_size=256",
        "data.val_size=128",
        "data.test_size=128",
        "data.batch_size=64",
        "data.eval_batch_size=128",
        "callbacks.rotation_robustness.max_samples=64",
        "callbacks.rotation_robustness.step_deg=45",
        "logger=csv",
    ]
)

# Per network (model.net._target_): overrides that shrink it to seconds-per-batch size for smoke runs. Every
# end-to-end model is overridden the same way (model.net.X); a network without an entry runs as configured.
TINY_NETS = {
    "gevit.models.VisionTransformer": TINY_VIT,
    "gevit.models.EqCvT": TINY_VIT,  # the ViT, EqCvT and CvT share the size arguments
    "gevit.models.CvT": TINY_VIT,
    "gevit.models.GroupTransformer": [
        "model.net.num_channels=8",
        "model.net.num_heads=2",
        "model.net.block_sizes=[1,1]",
        "model.net.expansion_per_block=1",
        "model.net.crop_per_layer=[0,0]",
        "model.net.attention_window=3",
    ],
    "gevit.models.HybridViT": [
        "model.net.stem_channels=[2,4]",
        "model.net.stem_kernel_size=3",
        "model.net.num_channels=8",
        "model.net.num_heads=2",
        "model.net.block_sizes=[1]",
        "model.net.attention_window=3",
        "model.net.embed_dim=4",
    ],
}
# Post-hoc experiments wrap a random tiny ViT instead of their stage-1 checkpoint (tests/lightning_modules/test_posthoc.py
# runs both stages).
TINY_POSTHOC = ["model/backbone=vit"] + [o.replace("model.net.", "model.backbone.") for o in TINY_VIT]


def tiny_model_overrides(cfg: DictConfig) -> list[str]:
    """The overrides that shrink the composed config's model (empty when unknown: the model runs as is)."""
    net = cfg.model.get("net")
    if net is not None and "_target_" in net:
        return list(TINY_NETS.get(net._target_, []))
    if cfg.model._target_ == "lightning_modules.PostHocClassifier":
        return list(TINY_POSTHOC)
    return []


def compose_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """The composed train config with ``paths.output_dir`` = ``output_dir`` and HydraConfig set
    (:func:`runkit.config.compose`), the config tree not printed."""
    cfg = compose(overrides, output_dir)
    with open_dict(cfg):
        cfg.print_config = False
    return cfg
