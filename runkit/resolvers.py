"""The custom ``${...}`` resolvers conf/ uses; :func:`register_resolvers` registers them (train.py, the compose
helper and every script call it before composing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runkit.wandb_logging import wandb_should_be_offline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

# What every data module states about its images (conf/data/_facts.yaml reads them with gevit_data_fact).
DATA_FACTS = ("num_classes", "in_channels", "image_size", "mean", "std")


def is_interactive() -> bool:
    """A progress bar only makes sense on a terminal, and never inside a Slurm job's log file."""
    return sys.stderr.isatty() and "SLURM_JOB_ID" not in os.environ


def data_fact(name: str, _parent_: Any) -> Any:
    """``${gevit_data_fact:NAME}`` in a data config: the fact ``NAME`` of the data module class named by the
    config's ``_target_`` — its class attribute (MNIST has 10 classes), or, where the fact is an option of the
    module (lensing's ``image_size``), the constructor's default. The class is the one place a fact is stated;
    the data config carries the value so that models interpolate ``${data.num_classes}`` and overrides such as
    ``data.image_size=65`` work where the module allows them."""
    if name not in DATA_FACTS:
        raise ValueError(f"gevit_data_fact:{name}: unknown data fact; expected one of {DATA_FACTS}")
    target = _parent_.get("_target_") if hasattr(_parent_, "get") else None
    if not target:
        raise ValueError(f"gevit_data_fact:{name} is used in a config without a _target_ (a data module class)")
    from hydra.utils import get_class

    value = get_class(target).data_fact(name)
    return list(value) if isinstance(value, tuple) else value


def register_resolvers() -> None:
    """Custom ``${...}`` resolvers used by conf/ (idempotent)."""
    cached = {
        "gevit_interactive": lambda: is_interactive(),
        "gevit_wandb_offline": lambda: wandb_should_be_offline(),
        "gevit_root": lambda: str(PROJECT_ROOT),
        "gevit_cwd": lambda: os.getcwd(),
    }
    for name, fn in cached.items():
        if not OmegaConf.has_resolver(name):
            # Cached: a submitit job rebuilds its config from the launcher's, copying this cache, so a
            # requeued job resolves the same directories as the first attempt did.
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
    if not OmegaConf.has_resolver("gevit_data_fact"):
        # Not cached: the cache is keyed by the arguments only, and the answer depends on the data set.
        OmegaConf.register_new_resolver("gevit_data_fact", data_fact, use_cache=False)
