"""Reading checkpoint files and rebuilding a trained model from nothing but its ``train.py`` checkpoint.

:func:`load_checkpoint` is :func:`gevit.checkpoint_io.read_checkpoint` (the one safe reader: a file whose
pickle would run code is refused, a truncated/corrupt/foreign one reported with the fix, never half-loaded).
train.py (resume / evaluate), Lightning's checkpoint I/O (:class:`runkit.checkpoint_writing.AtomicCheckpointIO`),
:func:`load_run`, the post-hoc checkpoint backbone, the figures and the benchmarks all read through it.

Every LightningModule of this project stores its resolved model config (with ``_target_``s) in the
checkpoint as ``checkpoint["gevit_model_config"]``. :func:`load_run` checks that config against what this
project builds (:func:`runkit.trusted_targets.check_stored_config`: a stored config is data, and a crafted
``_target_`` is refused before anything is imported or called), instantiates it with
``hydra.utils.instantiate``, loads the checkpoint's ``state_dict`` strictly and returns the module in eval
mode. It works for every model family the config tree can describe: end-to-end networks, post-hoc wrappers
and models with escnn layers. :func:`checkpoint_backbone` (``model/backbone=checkpoint``) is its network.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import os
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional

import torch.nn as nn

from gevit.checkpoint_io import (
    CheckpointError,
    CorruptCheckpointError,
    ForeignCheckpointError,
    MissingCheckpointError,
    UnsafeCheckpointError,
    read_checkpoint,
)
from gevit.escnn_utils import make_state_dict_mode_independent
from gevit.posthoc import Backbone, adapt
from runkit.trusted_targets import UntrustedConfigError, check_stored_config

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "ForeignCheckpointError",
    "LoadedRun",
    "MissingCheckpointError",
    "UnsafeCheckpointError",
    "UntrustedConfigError",
    "checkpoint_backbone",
    "load_checkpoint",
    "load_run",
    "network_from_checkpoint",
]

CONFIG_KEY = "gevit_model_config"

# Config keys that only fetch *initial* weights (official GE-ViT weights, timm/torchvision pretrained files,
# and any ``init_<part>_from`` such as a post-hoc aggregator started from an earlier run): the checkpoint's
# state_dict holds every trained weight, so they are switched off when rebuilding.
INITIAL_WEIGHT_KEYS = {"init_from": None, "weights": None, "pretrained": False}


def _initial_weights_off(key: str):
    """The value that switches off config key ``key`` if it fetches initial weights, else ``...``."""
    if key in INITIAL_WEIGHT_KEYS:
        return INITIAL_WEIGHT_KEYS[key]
    return None if key.startswith("init_") and key.endswith("_from") else ...


# ``ckpt_path`` names the file a post-hoc backbone was trained from. Its weights are overwritten by the
# state_dict too, but a ``checkpoint`` backbone also takes its architecture from it: kept when the file
# exists, dropped when it does not (and named if the model then cannot be built).
TRAINED_FROM_KEY = "ckpt_path"
# The peer ViT is this project's ViT with converted weights: rebuilt as ``vit`` it needs no peer file.
_REBUILD_AS = {
    "source": {"peer_vit": "vit"},
    "_target_": {"gevit.posthoc.backbones.peer_vit_backbone": "gevit.posthoc.backbones.vit_backbone"},
}


class LoadedRun(NamedTuple):
    """What :func:`load_run` returns: ``module`` (the LightningModule, eval mode; ``module(images in [0, 1])
    -> logits``, ``module.net`` the bare network), ``config`` (the stored model config, a plain dict) and
    ``path`` (the checkpoint file)."""

    module: nn.Module
    config: dict
    path: Path


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", option: Optional[str] = None, what: str = "checkpoint"
) -> dict:
    """Load a checkpoint a user pointed at, safely (:func:`gevit.checkpoint_io.read_checkpoint`)."""
    return read_checkpoint(path, option=option, what=what, map_location=map_location)


def stored_config(checkpoint: dict, path: str | Path) -> dict:
    """The model config stored in a checkpoint (a dict with a ``_target_``), in today's form when an earlier
    version wrote it (:mod:`runkit.legacy`)."""
    from runkit.legacy import upgrade_checkpoint_config

    config = upgrade_checkpoint_config(checkpoint.get(CONFIG_KEY), path)
    if not isinstance(config, dict) or "_target_" not in config:
        raise CheckpointError(
            f"{path} stores no model config ({CONFIG_KEY} with a _target_); only checkpoints "
            "written by this project's train.py can be rebuilt"
        )
    return config


def rebuild_config(config: Any, missing: list[str]) -> Any:
    """A copy of a stored config that rebuilds the architecture without the files of its initial weights.

    Walks the whole tree (wherever a network, backbone or aggregator sits): :data:`INITIAL_WEIGHT_KEYS` and
    ``init_*_from`` keys are switched off, a ``ckpt_path`` that no longer exists is dropped and appended to ``missing``.
    """
    if isinstance(config, list):
        return [rebuild_config(value, missing) for value in config]
    if not isinstance(config, dict):
        return config
    config = dict(config)
    for key, renames in _REBUILD_AS.items():
        if isinstance(config.get(key), str) and config[key] in renames:
            config[key] = renames[config[key]]
            config.pop(TRAINED_FROM_KEY, None)  # the peer file held initial weights only
    rebuilt = {}
    for key, value in config.items():
        off = _initial_weights_off(key)
        if off is not ... and value not in (None, False):
            value = off
        elif key == TRAINED_FROM_KEY and value and not Path(value).expanduser().is_file():
            missing.append(str(value))
            value = None
        rebuilt[key] = rebuild_config(value, missing)
    return rebuilt


@contextlib.contextmanager
def _without_warnings():
    """Rebuilding without the files of initial weights warns about random weights, which the state_dict
    replaces right after: silence warnings while the module is built."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def instantiate_model(config: dict, path: str | Path, trusted: Iterable[str] = ()) -> nn.Module:
    """The LightningModule described by a stored config (random weights, built with Hydra), after checking that
    the config names only what this project builds (:func:`runkit.trusted_targets.check_stored_config`)."""
    import hydra
    from omegaconf import OmegaConf

    check_stored_config(config, str(path), trusted)
    missing: list[str] = []
    rebuilt = rebuild_config(copy.deepcopy(config), missing)
    try:
        with _without_warnings():
            return hydra.utils.instantiate(OmegaConf.create(rebuilt))
    except CheckpointError:
        raise  # a checkpoint it refers to (a post-hoc backbone) is unusable: that error names it
    except Exception as err:
        if isinstance(err.__cause__, CheckpointError):
            raise err.__cause__ from None
        if missing:
            raise MissingCheckpointError(
                f"{path} was trained from {', '.join(missing)}, which does not exist any more, and its model "
                f"cannot be rebuilt without it (a post-hoc 'checkpoint' backbone takes its architecture from that "
                f"file); restore it. ({type(err).__name__}: {err})"
            ) from err
        raise CheckpointError(
            f"the model config stored in {path} ({config['_target_']}) cannot be built by this "
            f"version of the code; was it written by an older one? ({type(err).__name__}: "
            f"{err})"
        ) from err


# The checkpoints being rebuilt in this thread, outermost first: a post-hoc backbone names another checkpoint,
# and a crafted one could name itself (or a cycle).
_REBUILDING: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("gevit_rebuilding", default=())


def load_run(checkpoint: str | Path, *, option: Optional[str] = None, trusted: Iterable[str] = ()) -> LoadedRun:
    """Rebuild the LightningModule of a ``train.py`` checkpoint from its stored config, load its weights and
    put it in eval mode; returns ``(module, config, path)``.

    ``option`` names where the path came from (for error messages); ``trusted`` adds ``_target_``s of your own
    to those the project builds (:mod:`runkit.trusted_targets`).

    escnn layers cache their expanded filters in buffers (``filter``, ``expanded_bias``) that exist in eval
    mode only, so a checkpoint saved at validation end may hold them and a fresh module not: the module's
    escnn layers are made mode-independent first (:func:`gevit.escnn_utils.make_state_dict_mode_independent`:
    cached buffers in the file are ignored and rebuilt from the loaded weights), then loaded strictly.
    """
    path = Path(checkpoint).expanduser()
    identity = str(path.resolve())
    chain = _REBUILDING.get()
    if identity in chain:
        raise CheckpointError(
            f"{path} cannot be rebuilt: its model config names itself as a backbone checkpoint "
            f"({' -> '.join([*chain, identity])}); nothing was built"
        )
    state = load_checkpoint(path, option=option)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise ForeignCheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    config = stored_config(state, path)
    token = _REBUILDING.set((*chain, identity))
    try:
        module = make_state_dict_mode_independent(instantiate_model(config, path, trusted))
    finally:
        _REBUILDING.reset(token)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"the weights in {path} do not fit the model its config describes ({config['_target_']}):\n{err}"
        ) from err
    module.eval()
    return LoadedRun(module, config, path)


def network_from_checkpoint(ckpt_path: str | Path, option: str = "model.backbone.ckpt_path") -> nn.Module:
    """The trained network (``module.net``) of a ``train.py`` checkpoint of one end-to-end network, rebuilt by
    :func:`load_run`, in training mode like a freshly built network."""
    run = load_run(ckpt_path, option=option)
    if not isinstance(run.config.get("net"), dict):
        raise ForeignCheckpointError(
            f"{option}={ckpt_path} stores no network config (gevit_model_config['net']); it was not written by a "
            "train.py run of a single network (model=vit or similar)"
        )
    return run.module.net.train()


def checkpoint_backbone(
    num_classes: int, in_channels: int, image_size: int, ckpt_path: Optional[str] = None
) -> Backbone:
    """``model/backbone=checkpoint``: architecture and weights of the network in a ``train.py`` checkpoint."""
    if not ckpt_path:
        raise ValueError("model/backbone=checkpoint needs model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt")
    return adapt(network_from_checkpoint(ckpt_path), in_channels, image_size, str(ckpt_path))
