"""The run's config in Python: composing it as train.py would (:func:`compose`), building its ``_target_``
nodes with errors that name the key, and saving/printing the resolved config."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from runkit.config_validation import ConfigError
from runkit.resolvers import CONF_DIR, PROJECT_ROOT, register_resolvers


# ---- composing ------------------------------------------------------------------------------------
def compose(
    overrides: Sequence[str] = (),
    output_dir: Optional[str | Path] = None,
    config_name: str = "train",
    keep_hydra: bool = False,
) -> DictConfig:
    """The config ``train.py <overrides>`` would run, composed in this process (tests, benchmarks, notebooks).

    ``output_dir`` is the run directory (``paths.output_dir`` and Hydra's ``runtime.output_dir``; default: a
    fresh temporary folder); nothing is written there. Hydra's runtime is set as during a run, so
    ``${hydra:...}`` interpolations resolve and :func:`runkit.naming.run_identity` sees the overrides. The
    ``hydra`` node is dropped unless ``keep_hydra`` (e.g. to read the launcher's settings).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    output_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="gevit-run-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(PROJECT_ROOT)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if "paths" in cfg:
            cfg.paths.output_dir = str(output_dir)
        if not keep_hydra:
            del cfg["hydra"]
    return cfg


# ---- building -------------------------------------------------------------------------------------
def instantiate_collection(cfg: Optional[DictConfig], kind: str) -> list:
    """Instantiate every ``_target_`` node of ``cfg`` (a dict of name -> node); ``None`` entries are skipped."""
    objects = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"the {kind} config must be a mapping of name -> config, got {type(cfg).__name__}")
    for name, node in cfg.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"{kind}.{name} has no _target_; each {kind} entry must be instantiable")
        objects.append(instantiate_named(node, f"{kind}.{name}"))
    return objects


def instantiate_named(node: DictConfig, key: str):
    """Instantiate ``node``; a constructor's ValueError/TypeError comes back as one line naming ``key``."""
    from hydra.errors import InstantiationException

    from runkit.config_validation import ConfigError

    try:
        return hydra.utils.instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{key}: {cause}") from err
        raise


# ---- saving ---------------------------------------------------------------------------------------
def save_config(cfg: DictConfig, output_dir: Path, print_tree: bool = True) -> Path:
    """Save the resolved config as ``config_resolved.yaml`` (and print it as a tree); return the path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "config_resolved.yaml"
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    path.write_text(resolved)
    tree = config_tree(cfg)
    (output_dir / "config_tree.log").write_text(tree)
    if print_tree:
        try:
            from rich.console import Console
            from rich.syntax import Syntax
            from rich.tree import Tree

            root = Tree("CONFIG", guide_style="dim")
            for key, value in cfg.items():
                branch = root.add(str(key), guide_style="dim")
                text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
                branch.add(Syntax(text, "yaml"))
            Console(stderr=True).print(root)
        except Exception:  # printing is a courtesy; never fail a run over it
            print(tree, file=sys.stderr)
    return path


def config_tree(cfg: DictConfig) -> str:
    """The resolved config as plain indented text, one top-level key per section (``config_tree.log``)."""
    lines = []
    for key, value in cfg.items():
        lines.append(f"{key}:")
        body = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else f"{value}\n"
        lines.extend("  " + line for line in body.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"


def config_choices() -> dict:
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    return {
        str(k): (None if v is None else str(v)) for k, v in (hydra_cfg.runtime.choices.items() if hydra_cfg else [])
    }


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, plugins: list) -> L.Trainer:
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError)) or type(cause).__name__ == "MisconfigurationException":
            raise ConfigError(f"trainer: {cause}") from err
        raise
