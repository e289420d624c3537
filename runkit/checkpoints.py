"""Reading checkpoint files: the one safe loader (:func:`load_checkpoint`) and rebuilding a trained model from
nothing but its ``train.py`` checkpoint (:func:`load_run`).

:func:`load_checkpoint` reads any checkpoint a user points at with ``torch.load(weights_only=True)``: a file
whose pickle would run code is refused (:class:`UnsafeCheckpointError`), a truncated/corrupt one is reported
with the fix (:class:`CorruptCheckpointError`), never half-loaded. train.py (resume / evaluate), Lightning's
checkpoint I/O (:class:`runkit.checkpointing.AtomicCheckpointIO`), :func:`load_run` and the benchmarks all
read through it.

Every LightningModule of this project stores its resolved model config (with ``_target_``s) in the
checkpoint as ``checkpoint["gevit_model_config"]``. :func:`load_run` instantiates that config with
``hydra.utils.instantiate``, loads the checkpoint's ``state_dict`` strictly and returns the module in eval
mode. It works for every model family the config tree can describe: end-to-end networks, post-hoc wrappers
and models with escnn layers.

A Lightning checkpoint holds tensors and plain Python containers (loop, callback, optimiser and scheduler
states), which the safe unpickler accepts.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from gevit.escnn_utils import make_state_dict_mode_independent

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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


class CorruptCheckpointError(CheckpointError):
    """A truncated or corrupt checkpoint file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle holds objects ``torch.load(weights_only=True)`` refuses (it could run code)."""


class LoadedRun(NamedTuple):
    """What :func:`load_run` returns: ``module`` (the LightningModule, eval mode; ``module(images in [0, 1])
    -> logits``, ``module.net`` the bare network), ``config`` (the stored model config, a plain dict) and
    ``path`` (the checkpoint file)."""

    module: nn.Module
    config: dict
    path: Path


def _plain_numpy_globals() -> list:
    """numpy scalars/arrays some older checkpoints carry (e.g. a best score stored as np.float64)."""
    try:
        from numpy.core.multiarray import _reconstruct, scalar  # noqa: F401
    except ImportError:  # numpy 2 moved them
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore
    return [_reconstruct, scalar, np.ndarray, np.dtype, type(np.dtype("float64")), type(np.dtype("int64"))]


_SAFE_GLOBALS_ADDED = False


def register_safe_globals() -> None:
    """Allow the few plain types the project's checkpoints may hold under ``weights_only=True`` (idempotent).

    The project keeps checkpoints plain (dicts, lists, numbers, strings, tensors): configs are stored as
    plain containers, RNG states as tensors and lists. Only numpy's scalar/array reconstructors are added,
    which build data, never call arbitrary code."""
    global _SAFE_GLOBALS_ADDED
    if not _SAFE_GLOBALS_ADDED:
        torch.serialization.add_safe_globals(_plain_numpy_globals())
        _SAFE_GLOBALS_ADDED = True


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint a user pointed at, safely (``weights_only=True``), with one clear error per fault."""
    register_safe_globals()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a .ckpt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            unsafe = ""
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                unsafe = f" (it needs {', '.join(names[:5])})" if names else ""
            except Exception:
                pass
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path}: it holds Python objects beyond tensors and plain "
                f"containers{unsafe}, which could run code when unpickled (torch.load(weights_only=True) refuses "
                f"them; it was not written by this project's train.py, or a callback stored arbitrary objects). "
                f"Only load files from a source you "
                f"trust; if you do trust it, convert it once with torch.load(weights_only=False) and save "
                f"its state_dict"
            ) from None
        raise _corrupt(path, err) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise _corrupt(path, err) from None


def _corrupt(path: Path, err: BaseException) -> CorruptCheckpointError:
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CorruptCheckpointError(
        f"checkpoint {path} is truncated or corrupt ({detail}); it was not loaded. Move it aside "
        f"(mv {path} {path}.corrupt) and run again: a run resumes from the checkpoint before it, or starts "
        f"fresh when there is none"
    )


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


def instantiate_model(config: dict, path: str | Path) -> nn.Module:
    """The LightningModule described by a stored config (random weights, built with Hydra)."""
    import hydra
    from omegaconf import OmegaConf

    missing: list[str] = []
    rebuilt = rebuild_config(copy.deepcopy(config), missing)
    try:
        with _without_warnings():
            return hydra.utils.instantiate(OmegaConf.create(rebuilt))
    except Exception as err:
        if missing:
            raise FileNotFoundError(
                f"{path} was trained from {', '.join(missing)}, which does not exist any more, and its model "
                f"cannot be rebuilt without it (a post-hoc 'checkpoint' backbone takes its architecture from that "
                f"file); restore it. ({type(err).__name__}: {err})"
            ) from err
        raise CheckpointError(
            f"the model config stored in {path} ({config['_target_']}) cannot be built by this "
            f"version of the code; was it written by an older one? ({type(err).__name__}: "
            f"{err})"
        ) from err


def load_run(checkpoint: str | Path) -> LoadedRun:
    """Rebuild the LightningModule of a ``train.py`` checkpoint from its stored config, load its weights and
    put it in eval mode; returns ``(module, config, path)``.

    escnn layers cache their expanded filters in buffers (``filter``, ``expanded_bias``) that exist in eval
    mode only, so a checkpoint saved at validation end may hold them and a fresh module not: the module's
    escnn layers are made mode-independent first (:func:`gevit.escnn_utils.make_state_dict_mode_independent`:
    cached buffers in the file are ignored and rebuilt from the loaded weights), then loaded strictly.
    """
    path = Path(checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    config = stored_config(state, path)
    module = make_state_dict_mode_independent(instantiate_model(config, path))
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"the weights in {path} do not fit the model its config describes ({config['_target_']}):\n{err}"
        ) from err
    module.eval()
    return LoadedRun(module, config, path)
