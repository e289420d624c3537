"""Compose the project's Hydra config in-process, as train.py would, with outputs under a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import DictConfig, open_dict

from runkit.config import CONF_DIR, compose  # noqa: F401  (CONF_DIR: the tests import it from here)

TINY_DIR = CONF_DIR / "model" / "tiny"


def tiny_overrides(model: str) -> list[str]:
    """conf/model/tiny/<model>.yaml (the model's smoke-run size, following its defaults) as dotted overrides
    (``model.net.embed_dim=16``, ...): the same settings as ``+model/tiny=<model>``, for lists of overrides
    that are edited (a post-hoc backbone's) or extended."""
    spec = yaml.safe_load((TINY_DIR / f"{model}.yaml").read_text()) or {}
    overrides = []
    for parent in spec.get("defaults", []):
        if parent != "_self_":
            overrides += tiny_overrides(parent)
    for key, value in (spec.get("net") or {}).items():
        shown = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else value
        overrides.append(f"model.net.{key}={shown}")
    return overrides


# Small, fast settings shared by pipeline tests: a tiny ViT and few batches.
TINY_VIT = tiny_overrides("vit")

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


def tiny_models() -> dict[str, str]:
    """``{network _target_: tiny config name}``: the conf/model/<name>.yaml that has a conf/model/tiny/<name>.yaml,
    by the network it builds (gsanet builds GE-ViT's network, so it shares gevit's)."""
    table = {}
    for tiny in sorted(TINY_DIR.glob("*.yaml")):
        model = yaml.safe_load((CONF_DIR / "model" / tiny.name).read_text()) or {}
        target = (model.get("net") or {}).get("_target_")
        if target:
            table.setdefault(target, tiny.stem)
    return table


# Post-hoc experiments wrap a random tiny ViT instead of their stage-1 checkpoint (tests/lightning_modules/test_posthoc.py
# runs both stages).
TINY_POSTHOC = ["model/backbone=vit"] + [o.replace("model.net.", "model.backbone.") for o in TINY_VIT]


def tiny_model_overrides(cfg: DictConfig) -> list[str]:
    """The overrides that shrink the composed config's model: ``+model/tiny=<name>`` for a network with a
    conf/model/tiny/<name>.yaml (empty when none: the model runs as is)."""
    net = cfg.model.get("net")
    if net is not None and "_target_" in net:
        name = tiny_models().get(net._target_)
        return [f"+model/tiny={name}"] if name else []
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
