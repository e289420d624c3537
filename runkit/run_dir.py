"""What a run directory already holds decides what a new run in it does — decided before anything is written.

A finished run is a record: it is never rewritten by a rerun.

=========================================  =================================================================
the directory holds                        a run started into it
=========================================  =================================================================
nothing (or only a failed start)           starts fresh
an interrupted run (``last.ckpt``)         resumes it, if it belongs to this run's settings (else refused,
                                           naming every differing key: :mod:`runkit.run_config`)
a completed run, same settings             nothing to do: says so, exits 0, touches nothing
a completed run, ``max_epochs``/``max_steps``  resumes it (extending a finished run)
grown
a completed run, other settings            refused, naming every differing key; nothing written
anything, with ``auto_resume=false``       the old records are set aside (``<dir>.replaced-<time>``) and
                                           the run starts fresh; nothing is deleted
=========================================  =================================================================

:func:`plan_run` is the decision (train.py calls it with the run lock held, before it writes anything).
:class:`RunDirGuard`, a Hydra callback (``conf/hydra/default.yaml``), takes the same decision for a single
run before Hydra itself writes ``.hydra/`` and the log file into the directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from runkit.provenance import write_metrics_json
from runkit.run_config import build_run_config, config_differences, describe_difference
from runkit.run_lock import LOCK_FILE
from runkit.stopping import stop_reason

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config_resolved.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# What a run writes (besides Hydra's .hydra/ and its log file, and the lock).
RECORDS = (
    "checkpoints",
    METRICS_FILE,
    CONFIG_FILE,
    "config_tree.log",
    "rotation_robustness.csv",
    "rotation_robustness.png",
    "csv",
    "wandb",
)
# Options that say what a run does with its directory, beside the run config of its checkpoints.
RUN_OPTIONS = ("train", "test", "ckpt_path")


class RunDirInUseError(RuntimeError):
    """The run directory holds a finished run with other settings; nothing was written to it."""


@dataclass
class RunPlan:
    """``action``: ``fresh``, ``resume`` (from ``resume_from``), or ``done`` (``finished`` holds the completed
    run's metrics.json); ``set_aside``: where earlier records were moved (``auto_resume=false``)."""

    action: str
    resume_from: Optional[str] = None
    finished: Optional[dict] = None
    set_aside: Optional[Path] = None


def completed_metrics(run_dir: Path) -> Optional[dict]:
    """The ``metrics.json`` of a completed run in ``run_dir``, else None."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "completed" else None


def has_records(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RECORDS)


def settings(cfg: dict) -> dict:
    """The settings that make two runs the same run: the run config of its checkpoints, what it does
    (train/test/ckpt_path) and how long it trains. ``cfg``: a resolved config as plain containers."""
    trainer = cfg.get("trainer") or {}
    return {
        "run": build_run_config(cfg.get("model") or {}, cfg.get("data") or {}, trainer, cfg.get("seed"), {}),
        # a training run's ckpt_path only says where to resume from (run_config checks that it is this run's)
        "options": {key: cfg.get(key) for key in RUN_OPTIONS if not (key == "ckpt_path" and cfg.get("train"))},
        "length": {"max_epochs": trainer.get("max_epochs"), "max_steps": trainer.get("max_steps", -1)},
    }


def _longer(new: dict, old: dict) -> bool:
    """True when ``new`` trains longer than ``old`` and nowhere shorter (an extension of a finished run)."""

    def steps(value):
        return float("inf") if value in (None, -1) else value

    epochs_new, epochs_old = new.get("max_epochs"), old.get("max_epochs")
    epochs = steps(-1 if epochs_new is None else epochs_new), steps(-1 if epochs_old is None else epochs_old)
    limits = steps(new.get("max_steps")), steps(old.get("max_steps"))
    return epochs[0] >= epochs[1] and limits[0] >= limits[1] and (epochs[0] > epochs[1] or limits[0] > limits[1])


def stored_settings(run_dir: Path) -> Optional[dict]:
    """The settings of the run recorded in ``run_dir/config_resolved.yaml`` (None when there is none)."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return settings(cfg) if isinstance(cfg, dict) else None


def _option_name(key: str) -> str:
    """The command-line name of a :func:`settings` key (``run.model.x`` -> ``model.x``)."""
    section, _, rest = key.partition(".")
    return {"run": rest, "options": rest, "length": f"trainer.{rest}"}.get(section, key)


def finished_run_decision(run_dir: Path, cfg: dict) -> Optional[str]:
    """For a directory holding a completed run: ``done`` (same settings), ``extend`` (it trains longer);
    raises :class:`RunDirInUseError` for other settings; None when ``run_dir`` holds no completed run."""
    finished = completed_metrics(run_dir)
    if finished is None:
        return None
    old, new = stored_settings(run_dir), settings(cfg)
    if old is None:
        raise RunDirInUseError(
            f"run dir {run_dir} holds a completed run whose {CONFIG_FILE} is missing or unreadable, so it "
            "cannot be told apart from this one; give this run another directory (hydra.run.dir=...), or set the "
            "old run aside with auto_resume=false"
        )
    diffs = config_differences(old, new, ["run", "options"])
    if not diffs and old["length"] == new["length"]:
        return "done"
    if not diffs and new["options"]["train"] and _longer(new["length"], old["length"]):
        return "extend"
    diffs += config_differences(old, new, ["length"])
    raise RunDirInUseError(
        f"run dir {run_dir} holds a completed run with other settings ("
        + "; ".join(describe_difference(_option_name(key), a, b, "there") for key, a, b in diffs)
        + "); it is left as it is. Give this run its own directory (hydra.run.dir=...), or set the finished run "
        "aside with auto_resume=false"
    )


def set_aside(run_dir: Path, whole: bool) -> Path:
    """Move the records in ``run_dir`` to ``<run_dir>.replaced-<time>`` (the whole folder when ``whole``;
    else only :data:`RECORDS`, leaving what Hydra or the caller is already writing there)."""
    target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}")
        suffix += 1
    if whole:
        os.rename(run_dir, target)
    else:
        target.mkdir(parents=True)
        for name in RECORDS:
            if (run_dir / name).exists():
                shutil.move(str(run_dir / name), str(target / name))
    log.warning("auto_resume=false: the earlier records of %s were moved to %s", run_dir, target)
    return target


def plan_run(run_dir: Path, cfg: dict, whole_dir: bool = False, owner: bool = True) -> RunPlan:
    """Decide what a run with resolved config ``cfg`` (plain containers) does in ``run_dir``; see the module
    docstring. Writes nothing, except moving old records aside for ``auto_resume=false``. ``owner=False``
    (the DDP processes beside the launching one): only which checkpoint to resume; the owner decided the rest."""
    run_dir = Path(run_dir)
    fresh_start = cfg.get("train") and not cfg.get("auto_resume", True) and not cfg.get("ckpt_path")
    if owner and fresh_start and has_records(run_dir):
        return RunPlan("fresh", set_aside=set_aside(run_dir, whole=whole_dir))
    if owner and finished_run_decision(run_dir, cfg) == "done":
        return RunPlan("done", finished=completed_metrics(run_dir))
    if cfg.get("train") and cfg.get("ckpt_path"):
        return RunPlan("resume", resume_from=str(Path(cfg["ckpt_path"]).expanduser()))
    last = (run_dir / LAST_CHECKPOINT).absolute()
    if cfg.get("train") and cfg.get("auto_resume", True) and last.is_file():
        return RunPlan("resume", resume_from=str(last))
    return RunPlan("fresh")


def done_message(run_dir: Path, metrics: dict) -> str:
    shown = ", ".join(
        f"{key} {metrics[key]:.4f}" for key in ("val/acc_best", "test/acc") if isinstance(metrics.get(key), float)
    )
    return (
        f"run dir {run_dir} already holds this run, completed ({shown or 'no metrics'}); nothing to do, nothing "
        "changed. To train longer raise trainer.max_epochs; to evaluate it again: python train.py train=false "
        "ckpt_path=<its checkpoint> hydra.run.dir=<another dir>"
    )


# ---- before Hydra writes anything ---------------------------------------------------------------------------
def _task_config(config: Any) -> dict:
    """The task part of Hydra's config (everything but ``hydra``), resolved, as plain containers; resolving
    ``${hydra:runtime.output_dir}`` needs the run directory Hydra is about to use."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    config = config.copy()
    with open_dict(config):
        config.hydra.runtime.output_dir = os.path.abspath(str(config.hydra.run.dir))
    HydraConfig.instance().set_config(config)  # run_job sets it again for the job itself
    return {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in config.items_ex(resolve=False)
        if key != "hydra"
    }


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra < 1.1
    _HydraCallback = object


class RunDirGuard(_HydraCallback):
    """A Hydra callback: a single run's directory decision (:func:`plan_run`) before Hydra writes ``.hydra/``.

    A completed run with the same settings ends the process with exit code 0 and one line; other settings
    end it with the error (exit code 1); ``auto_resume=false`` sets the whole old folder aside. A directory
    whose lock is held by a live process is left to train.py, which refuses it. (Hydra turns an exception of a
    callback into a warning; train.py takes the same decision again, so nothing is lost if this one fails.)"""

    def on_run_start(self, config, **kwargs) -> None:
        from runkit.run_lock import RunLock

        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        if not run_dir.is_dir() or RunLock(run_dir).held_by_live_process():
            return
        cfg = _task_config(config)
        try:
            plan = plan_run(run_dir, cfg, whole_dir=True)
        except RunDirInUseError as err:
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
        if plan.action == "done":
            print(done_message(run_dir, plan.finished or {}), file=sys.stderr)
            raise SystemExit(0)


def run_settings(cfg: DictConfig) -> dict:
    """The resolved options :func:`plan_run` compares with a finished run's."""
    keys = ("model", "data", "trainer", "seed", "train", "test", "ckpt_path", "auto_resume")
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in keys
    }


def record_refused_start(out_dir: Path, cfg: DictConfig, err: BaseException, started: float) -> None:
    """A job refused for its options leaves a ``failed: ...`` metrics.json, so that a sweep's table shows why
    it has no result; only in a directory no run has written to (another run's records are never touched)."""
    if not out_dir.is_dir() or has_records(out_dir) or (out_dir / LOCK_FILE).exists():
        return
    status, _ = stop_reason(err)
    metrics = {"status": status, "output_dir": str(out_dir), "seed": cfg.get("seed")}
    metrics["duration_s"] = round(time.time() - started, 2)
    try:
        write_metrics_json(out_dir / "metrics.json", metrics)
    except OSError as write_error:  # the refusal itself is what the user must see
        log.warning("could not record the refused start in %s: %s", out_dir, write_error)
