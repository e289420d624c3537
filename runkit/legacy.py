"""Checkpoints written by earlier versions of this project: their stored model config in today's form.

Before the one-build idiom (every model a ``lightning_modules`` classifier around a ``net``) three model configs were written differently; the weights'
names did not change (``net.*``), so translating the stored config is all an old checkpoint needs to be
rebuilt (:func:`runkit.load_run`), evaluated (``train.py train=false ckpt_path=...``) or wrapped post hoc
(``model/backbone=checkpoint``):

- GE-ViT / GSA-Nets (``lightning_modules.GroupTransformerClassifier``) and the hybrid
  (``lightning_modules.HybridClassifier``) had the network's keywords at the top of the model config and
  called GE-ViT's attention window ``patch_size``. Today: ``lightning_modules.ImageClassifier`` with
  ``net: {_target_: gevit.models.GroupTransformer | gevit.models.HybridViT, attention_window: ...}``.
- Post-hoc backbones were ``{source: vit | timm | ..., name: ...}`` dicts and aggregators ``{name: mean}``.
  Today each is the ``_target_`` yaml of ``conf/model/backbone/<source>.yaml`` /
  ``conf/model/aggregator/<name>.yaml`` (read from the folder, so no list is kept here), with the stored
  keys over it; keys the old config did not store take today's yaml values (e.g. ``lambda``'s ``features``).

:func:`upgrade_model_config` returns the translated config and one line per change; a config already in
today's form comes back unchanged with no lines. The translation is logged once per checkpoint.
"""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any

from runkit.resolvers import CONF_DIR

log = logging.getLogger(__name__)


# the old LightningModule -> the network it built (both the package-level and the module path were written)
LEGACY_NETWORK_MODULES = {
    "lightning_modules.GroupTransformerClassifier": "gevit.models.GroupTransformer",
    "lightning_modules.group_transformer.GroupTransformerClassifier": "gevit.models.GroupTransformer",
    "lightning_modules.HybridClassifier": "gevit.models.HybridViT",
    "lightning_modules.hybrid.HybridClassifier": "gevit.models.HybridViT",
}
# functions and classes that moved (wherever they sit in a stored config)
TARGET_RENAMES = {"lightning_modules.posthoc.checkpoint_backbone": "runkit.checkpoint_loading.checkpoint_backbone"}
# keys of the old flat configs that are network keywords under another name today
NETWORK_RENAMES = {"patch_size": "attention_window"}
# keys a network is told as well as the classifier (the data's shape)
SHAPE_KEYS = ("num_classes", "in_channels", "image_size")
# old post-hoc backbone keys renamed in the _target_ functions
BACKBONE_RENAMES = {"timm": {"name": "model_name"}}

_logged: set[str] = set()


def classifier_keys() -> set[str]:
    """The keywords of :class:`lightning_modules.ImageClassifier` itself (all others belong to its ``net``)."""
    from lightning_modules.base import BaseClassifierModule
    from lightning_modules.classifier import ImageClassifier

    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    keys = {
        name
        for cls in (BaseClassifierModule, ImageClassifier)
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.kind in named
    }
    return (keys - {"self", "net"}) | {"_target_", "_convert_", "_recursive_"}


def _yaml(group: str, name: str) -> dict:
    """``conf/model/<group>/<name>.yaml`` as a plain dict (its ``defaults`` merged, as Hydra would)."""
    from omegaconf import OmegaConf

    if group == "aggregator":
        from runkit.posthoc_methods import aggregator_config

        node = aggregator_config(name, CONF_DIR / "model" / "aggregator")
    else:
        path = CONF_DIR / "model" / group / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"no conf/model/{group}/{name}.yaml to translate the old '{name}' {group} into")
        node = OmegaConf.load(path)
        node.pop("defaults", None)
    return OmegaConf.to_container(node, resolve=False)


def _upgrade_network_module(config: dict, changes: list[str]) -> dict:
    old_target = config["_target_"]
    keep = classifier_keys()
    top = {k: v for k, v in config.items() if k in keep}
    net = {"_target_": LEGACY_NETWORK_MODULES[old_target]}
    net.update({k: config[k] for k in SHAPE_KEYS if k in config})
    for old, new in NETWORK_RENAMES.items():
        if old in config and new in config and config[old] != config[new]:
            raise ValueError(
                f"the stored model config of {old_target} holds both {old}={config[old]!r} (the old name of "
                f"{new}) and {new}={config[new]!r}; which one the run used cannot be told, so it is not guessed"
            )
    for key, value in config.items():
        if key not in keep:
            net[NETWORK_RENAMES.get(key, key)] = value
    top["_target_"] = "lightning_modules.ImageClassifier"
    top["net"] = net
    renamed = [f"{old}->{new}" for old, new in NETWORK_RENAMES.items() if old in config]
    changes.append(
        f"{old_target} -> lightning_modules.ImageClassifier with net {net['_target_']}"
        + (f" ({', '.join(renamed)})" if renamed else "")
    )
    return top


def _upgrade_posthoc_part(part: dict, group: str, marker: str, changes: list[str]) -> dict:
    name = part[marker]
    new = _yaml(group, name)
    renames = BACKBONE_RENAMES.get(name, {}) if group == "backbone" else {}
    for key, value in part.items():
        if key != marker:
            new[renames.get(key, key)] = value
    changes.append(f"{group} {{{marker}: {name}}} -> {new['_target_']}")
    return new


def _rename_targets(node: Any, changes: list[str]) -> Any:
    if isinstance(node, list):
        return [_rename_targets(value, changes) for value in node]
    if not isinstance(node, dict):
        return node
    node = {key: _rename_targets(value, changes) for key, value in node.items()}
    target = node.get("_target_")
    if isinstance(target, str) and target in TARGET_RENAMES:
        node["_target_"] = TARGET_RENAMES[target]
        changes.append(f"{target} -> {node['_target_']}")
    return node


def upgrade_model_config(config: Any) -> tuple[Any, list[str]]:
    """Today's form of a stored model config and the changes made (``[]``: it already was)."""
    if not isinstance(config, dict):
        return config, []
    changes: list[str] = []
    config = _rename_targets(copy.deepcopy(config), changes)
    if config.get("_target_") in LEGACY_NETWORK_MODULES:
        config = _upgrade_network_module(config, changes)
    for group, marker in (("backbone", "source"), ("aggregator", "name")):
        part = config.get(group)
        if isinstance(part, dict) and "_target_" not in part and marker in part:
            config[group] = _upgrade_posthoc_part(part, group, marker, changes)
    return config, changes


def upgrade_checkpoint_config(config: Any, path: Any) -> Any:
    """:func:`upgrade_model_config`, logging what was translated (once per checkpoint path)."""
    config, changes = upgrade_model_config(config)
    if changes and str(path) not in _logged:
        _logged.add(str(path))
        log.info("%s was written by an earlier version; its model config was translated: %s", path, "; ".join(changes))
    return config
