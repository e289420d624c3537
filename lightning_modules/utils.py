"""Run-level helpers for train.py: config resolvers, building callbacks/loggers, config tree, git
commit, metrics.json. (Hydra/OmegaConf live here and in train.py, never in gevit/.)"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ---- resolvers ------------------------------------------------------------------------------------
def is_interactive() -> bool:
    """A progress bar only makes sense on a terminal, and never inside a Slurm job's log file."""
    return sys.stderr.isatty() and "SLURM_JOB_ID" not in os.environ


def wandb_should_be_offline() -> bool:
    """Offline when the user set nothing and no credentials are found; WANDB_MODE always wins."""
    if os.environ.get("WANDB_MODE"):
        return False  # wandb reads WANDB_MODE itself (online, offline or disabled)
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" not in netrc.read_text()
    except OSError:
        return True


def register_resolvers() -> None:
    """Custom ``${...}`` resolvers used by conf/ (idempotent)."""
    resolvers = {
        "gevit_interactive": lambda: is_interactive(),
        "gevit_wandb_offline": lambda: wandb_should_be_offline(),
        "gevit_root": lambda: str(PROJECT_ROOT),
        "gevit_cwd": lambda: os.getcwd(),
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            # Cached: a submitit job rebuilds its config from the launcher's, copying this cache, so a
            # requeued job resolves the same directories as the first attempt did.
            OmegaConf.register_new_resolver(name, fn, use_cache=True)


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

    from lightning_modules.config_validation import ConfigError

    try:
        return hydra.utils.instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{key}: {cause}") from err
        raise


# ---- run identity (W&B name, group, tags) -----------------------------------------------------------
# Overrides that name a path or a location, not a method: left out of run names.
_UNNAMING_KEYS = ("hydra", "paths.", "logger", "task_name", "print_config", "callbacks")
_UNNAMING_SUFFIXES = ("ckpt_path", "data_dir", "init_from", "output_dir")


def _hydra_runtime() -> Optional[DictConfig]:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def naming_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides that say what a run *is* (``model.group=p8``, ``seed=1``), without
    paths and logging details."""
    kept = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key.startswith(_UNNAMING_KEYS) or key.endswith(_UNNAMING_SUFFIXES) or "/" in value or "\\" in value:
            continue
        kept.append(override.lstrip("+~"))
    return kept


def swept_keys(sweep_dir: Path) -> Optional[set[str]]:
    """The keys a multirun sweeps (``model.group=p4,p8``, ``seed=range(3)``), read from the
    ``multirun.yaml`` Hydra writes into the sweep folder; None when it is not there."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        task_overrides = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides([str(o) for o in task_overrides])
    except Exception:  # no file, or not Hydra's: name the run by all its overrides instead
        return None
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def run_identity(cfg: DictConfig) -> dict:
    """How a run is named, grouped and tagged (on W&B and in metrics.json):

    - ``name``: the overrides that name it, joined by commas (``model.group=p8,seed=1``) — in a sweep only
      the swept ones — else the experiment;
    - ``group``: one per sweep — ``<task_name>/<sweep folder>``, the sweep folder being the first folder
      under ``logs/<task_name>/multiruns/`` (so the sub-sweeps of one table share a group); a single
      run has the group ``<task_name>``;
    - ``tags``: ``cfg.tags`` plus ``data:``, ``model:``, ``experiment:`` (the config choices) and,
      where the model has them, ``group:``, ``regime:``, ``aggregator:``, ``patch:``.
    """
    hydra_cfg = _hydra_runtime()
    choices = dict(hydra_cfg.runtime.choices) if hydra_cfg is not None else {}
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    multirun = hydra_cfg is not None and str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    experiment = choices.get("experiment")
    naming = naming_overrides(overrides)
    sweep_dir = Path(cfg.paths.output_dir).parent
    swept = swept_keys(sweep_dir) if multirun else None
    if swept:
        naming = [o for o in naming if o.partition("=")[0] in swept] or naming
    name = ",".join(naming) or experiment or cfg.get("task_name", "run")

    group = str(cfg.get("task_name", "run"))
    if multirun:
        sweeps_root = Path(cfg.paths.log_dir) / group / "multiruns"
        try:
            group = f"{group}/{sweep_dir.relative_to(sweeps_root).parts[0]}"
        except (ValueError, IndexError):
            group = f"{group}/{sweep_dir.name}"

    tags = [str(t) for t in (cfg.get("tags") or [])]
    for key in ("data", "model", "experiment", "model/aggregator", "model/backbone"):
        if choices.get(key):
            tags.append(f"{key.split('/')[-1]}:{choices[key]}")
    model = cfg.get("model") or {}
    for key, label in (("group", "group"), ("regime", "regime"), ("attention_window", "window")):
        for node in (model, model.get("net") if isinstance(model, DictConfig) else None):  # model.X or model.net.X
            if isinstance(node, DictConfig) and node.get(key) is not None:
                tags.append(f"{label}:{node.get(key)}")
    return {"name": name, "group": group, "tags": list(dict.fromkeys(t[:64] for t in tags))}


# ---- provenance -----------------------------------------------------------------------------------
def git_state(root: Path = PROJECT_ROOT) -> dict:
    """The commit the code runs at, and whether the work tree has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": "unknown", "git_dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}


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
    lines = []
    for key, value in cfg.items():
        lines.append(f"{key}:")
        body = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else f"{value}\n"
        lines.extend("  " + line for line in body.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"


def to_builtin(value: Any) -> Any:
    """Tensors / numpy scalars -> python numbers, recursively (for JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    return value


def write_metrics_json(path: Path, metrics: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_builtin(metrics), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
