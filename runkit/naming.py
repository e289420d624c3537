"""How a run is named, grouped and tagged (on W&B, in metrics.json and in results tables): from the overrides
that say what the run *is*, not where its files are."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

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
