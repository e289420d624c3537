"""Multirun plumbing registered in conf/: each sweep keeps its own records, and searches survive bad trials.

- :class:`SweepCallback` (``hydra.callbacks.sweep`` in conf/hydra/default.yaml), at the start of every
  multirun, before anything is launched: checks the Slurm launcher's settings (:func:`runkit.slurm.check_launcher`)
  and claims ``hydra.sweep.dir`` (:func:`claim_sweep_dir`): a folder holding the records of another sweep is
  refused, so a second sweep never overwrites the first one's job folders;
- :class:`TrialResults` and :func:`record_search_without_result`, used by the Optuna sweeper of
  conf/hparams_search/optuna.yaml (the Hydra plugin ``hydra_plugins/gevit_sweeps``): a trial that crashed,
  returned NaN or never validated is recorded as failed and the search goes on, and
  ``optimization_results.yaml`` is written even when no trial completed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runkit.config_validation import ConfigError

log = logging.getLogger(__name__)

SWEEP_RECORD = "sweep.json"  # written into hydra.sweep.dir when a sweep starts
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _sweep_identity(config: DictConfig) -> dict:
    """What a sweep is: its sweeper and its command-line overrides (the same command = the same sweep)."""
    return {
        "sweeper": str(config.hydra.sweeper.get("_target_", "")),
        "overrides": [str(o) for o in config.hydra.overrides.task],
    }


def _earlier_records(sweep_dir: Path) -> list[str]:
    """What in ``sweep_dir`` belongs to an earlier sweep (job folders, Hydra's and Optuna's files)."""
    found = [
        name for name in ("multirun.yaml", "optimization_results.yaml", ".submitit") if (sweep_dir / name).exists()
    ]
    jobs = sorted(
        p.name
        for p in sweep_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / ".hydra").is_dir() or (p / "metrics.json").is_file())
    )
    if jobs:
        found.append(f"job folders {', '.join(jobs[:5])}{' ...' if len(jobs) > 5 else ''}")
    return found


def _earlier_identity(sweep_dir: Path) -> Optional[dict]:
    """The identity of the sweep that used ``sweep_dir`` before: from its record, else Hydra's multirun.yaml."""
    record = sweep_dir / SWEEP_RECORD
    try:
        return json.loads(record.read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        hydra_cfg = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        return {
            "sweeper": str(hydra_cfg.sweeper.get("_target_", "")),
            "overrides": [str(o) for o in hydra_cfg.overrides.task],
        }
    except Exception:  # no multirun.yaml (an Optuna search writes none), or not Hydra's
        return None


def claim_sweep_dir(config: DictConfig) -> Path:
    """Make ``hydra.sweep.dir`` this sweep's own, or refuse before anything is written.

    An empty or new folder is claimed (``sweep.json``: the sweep's overrides, host, pid, start time). A folder
    that holds another sweep's records is refused with one message naming them. The *same* grid sweep again
    (same sweeper, same overrides) may continue in its folder — each job then resumes or keeps its own run,
    as a single run does in its directory; a search (any other sweeper) never does, since its trials are not
    the same jobs twice."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    identity = _sweep_identity(config)
    if sweep_dir.is_dir():
        records = _earlier_records(sweep_dir)
        earlier = _earlier_identity(sweep_dir)
        if records or earlier is not None:
            same = earlier == identity and identity["sweeper"] == BASIC_SWEEPER
            if not same:
                what = f"the sweep `{' '.join(earlier['overrides'])}`" if earlier else "an earlier sweep"
                raise ConfigError(
                    f"hydra.sweep.dir={sweep_dir} already holds the records of {what} ({'; '.join(records) or SWEEP_RECORD}); "
                    "a second sweep there would overwrite them. Leave hydra.sweep.dir to its timestamped default "
                    "or name a new folder; nothing was run"
                )
            log.info("continuing the same sweep in %s: each job resumes or keeps its own run", sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "identity": identity,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (sweep_dir / SWEEP_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return sweep_dir


class SweepCallback(Callback):
    """Checks a multirun before it launches anything (see the module docstring). Hydra turns an exception of a
    callback into a warning and goes on, so a refusal leaves as ``SystemExit``: its one line, exit code 1."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from runkit.slurm import TARGET, check_launcher

        try:
            if str(config.hydra.launcher.get("_target_", "")) == TARGET:
                check_launcher(config)
            claim_sweep_dir(config)
        except ConfigError as err:
            raise SystemExit(f"{type(err).__name__}: {err}") from None


def _failure_of(ret: JobReturn) -> Optional[str]:
    """Why a finished trial gives the search nothing to learn from (None: it returned a finite number)."""
    if ret.status != JobStatus.COMPLETED:
        return None  # already failed: the sweeper records it so
    value = ret._return_value
    if value is None:
        return "returned no objective (it never validated, or the metric was not computed; see its metrics.json)"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"returned {value!r}, not a number"
    return None if math.isfinite(number) else f"returned {number} (non-finite)"


class TrialResults:
    """The launcher as the Optuna sweeper sees it: a trial without a finite objective comes back failed, so the
    sweeper records it as a failed trial (hydra-optuna-sweeper would otherwise stop at a NaN)."""

    def __init__(self, launcher):
        self.launcher = launcher

    def __getattr__(self, name: str):
        return getattr(self.launcher, name)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        returns = self.launcher.launch(job_overrides, initial_job_idx)
        for number, ret in enumerate(returns, start=initial_job_idx):
            reason = _failure_of(ret)
            if reason is not None:
                ret.status = JobStatus.FAILED
                ret.return_value = ValueError(f"trial {number} {reason}")
        return returns


def record_search_without_result(sweep_dir: Path) -> RuntimeError:
    """Write the ``optimization_results.yaml`` of a search in which no trial completed; the error to raise."""
    OmegaConf.save(
        OmegaConf.create(
            {
                "name": "optuna",
                "best_params": None,
                "best_value": None,
                "completed_trials": 0,
                "note": "no trial completed; each trial's metrics.json says why",
            }
        ),
        sweep_dir / "optimization_results.yaml",
    )
    return RuntimeError(f"no trial of the search completed (see {sweep_dir}/<trial>/metrics.json)")


def sweeper_value(cfg: DictConfig, metrics: dict) -> Optional[float]:
    """``optimized_metric`` of a finished run for the sweeper, or None where the run could not compute it
    (an evaluate-only run, a run that ended before its first validation: said once in the log)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if value is None:
        if cfg.train:
            log.warning(
                "optimized_metric=%s was not computed (available: %s); returning nothing to the sweeper",
                name,
                sorted(k for k in metrics if "/" in k and metrics[k] is not None),
            )
        return None
    return float(value)
