"""Slurm sweeps through hydra-submitit-launcher (``hydra/launcher=slurm``), with what a real cluster needs:

- :func:`check_launcher`: settings Slurm would refuse (``GEVIT_SLURM_CPUS=0``, ``GEVIT_SLURM_GPUS=abc``, GPU
  training without GPUs) stop the sweep before anything is submitted, with one line naming the variable;
- :func:`submission_parameters`: no GPU asked (a CPU partition) means no ``--gpus-per-node`` line at all;
- :class:`QueueStateWatcher`: submitit polls ``sacct``; on a cluster without accounting that fails on every
  poll. The first failure is reported once and states are read from ``squeue`` from then on (a job that left
  the queue has ended; its outcome is read from submitit's result file, as always).

The number of Slurm tasks per node is ``trainer.devices`` (conf/hydra/launcher/slurm.yaml): one process per
device, which is what Lightning's DDP expects under Slurm (and 1 for a single-device run, CPU or GPU).
The launcher itself is a Hydra plugin, so it lives in ``hydra_plugins/gevit_sweeps`` (Hydra looks for
plugins nowhere else) and uses the functions here.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import subprocess
import time
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from runkit.config_validation import ConfigError

log = logging.getLogger(__name__)

# launcher option -> (where its value comes from, the smallest value Slurm accepts, whole number?)
LIMITS = {
    "timeout_min": ("GEVIT_SLURM_TIME_MIN", 1, True),
    "gpus_per_node": ("GEVIT_SLURM_GPUS", 0, True),  # 0: a CPU partition
    "cpus_per_task": ("GEVIT_SLURM_CPUS", 1, True),
    "mem_gb": ("GEVIT_SLURM_MEM_GB", 0, False),
    "tasks_per_node": ("trainer.devices", 1, True),
    "nodes": (None, 1, True),
    "max_num_timeout": (None, 0, True),
    "signal_delay_s": (None, 0, True),
    "array_parallelism": (None, 1, True),
}
TARGET = "hydra_plugins.gevit_sweeps.SlurmLauncher"  # the launcher these checks are for (Hydra plugin)


def _source(config: DictConfig, key: str, variable: Optional[str]) -> tuple[str, Any]:
    """(what set ``key``, its value as given): the environment variable or config option the launcher reads
    for it (``GEVIT_SLURM_CPUS``, ``trainer.devices``), else the Hydra option itself (an override)."""
    raw = OmegaConf.to_container(config.hydra.launcher, resolve=False).get(key)
    if not (variable and variable in str(raw)):
        return f"hydra.launcher.{key}", raw
    if variable.startswith("trainer."):
        return variable, OmegaConf.select(config, variable, default=None)
    if variable in os.environ:
        return variable, os.environ[variable]
    return variable, OmegaConf.select(config.hydra.launcher, key, default=raw)


def check_launcher(config: DictConfig) -> None:
    """Refuse, before anything is submitted, Slurm settings that sbatch or the job would refuse; one line
    naming the variable."""
    launcher = config.hydra.launcher
    values: dict[str, Any] = {}
    for key, (variable, minimum, whole) in LIMITS.items():
        if key not in launcher:
            continue
        source, given = _source(config, key, variable)
        try:
            value = OmegaConf.select(launcher, key, throw_on_resolution_failure=True)
        except Exception:  # a typed option given text ('abc' for a number)
            value = given
        if value is None and key != "tasks_per_node":
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        large_enough = number and (value > 0 if key == "mem_gb" else value >= minimum)
        if not (large_enough and (not whole or float(value).is_integer())):
            need = ("a whole number" if whole else "a number") + (" > 0" if key == "mem_gb" else f" >= {minimum}")
            hint = " (one Slurm task per device: set trainer.devices=N)" if key == "tasks_per_node" else ""
            raise ConfigError(f"invalid Slurm setting: {source}={given!r}: Slurm needs {need}{hint}")
        values[key] = value
    gpus = values.get("gpus_per_node") or 0
    accelerator = str(OmegaConf.select(config, "trainer.accelerator", default="auto"))
    devices = values.get("tasks_per_node", 1)
    gpu_source, _ = _source(config, "gpus_per_node", "GEVIT_SLURM_GPUS")
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise ConfigError(
            f"invalid Slurm setting: {gpu_source}=0 asks for no GPU, but trainer.accelerator={accelerator}: "
            "add trainer.accelerator=cpu for a CPU partition, or ask for GPUs"
        )
    if (accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus > 0)) and devices > gpus:
        raise ConfigError(
            f"invalid Slurm setting: trainer.devices={devices} processes per node, but {gpu_source}={gpus} GPUs "
            "per node: one GPU per process"
        )


class QueueStateWatcher(SlurmInfoWatcher):
    """submitit's poller of job states; where ``sacct`` fails (no accounting) it says so once and reads
    ``squeue --states=all`` instead. Jobs no longer in the queue have ended."""

    def __init__(self, delay_s: int = 600) -> None:
        super().__init__(delay_s=delay_s)
        self.use_squeue = False

    def _make_command(self) -> Optional[list[str]]:
        command = super()._make_command()
        if command is None or not self.use_squeue:
            return command
        # every job of this user, not --jobs: squeue refuses a job id it has already forgotten (MinJobAge)
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", f"--user={getpass.getuser()}"]

    def update(self) -> None:
        command = self._make_command()
        if command is None:
            return
        self._num_calls += 1
        try:
            output = subprocess.run(command, check=True, capture_output=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as err:
            reason = (getattr(err, "stderr", None) or b"").decode(errors="replace").strip() or str(err)
            if not self.use_squeue:
                self.use_squeue = True
                log.warning(
                    "sacct failed (%s): this cluster keeps no job accounting, so job states are read from squeue "
                    "from now on (this warning is not repeated)",
                    reason.splitlines()[-1],
                )
                return self.update()
            log.debug("squeue failed (%s); job states kept from the last poll", reason)
        else:
            if self.use_squeue:
                found = self.read_info(b"JobID|State|NodeList\n" + output)
                for job_id in self._registered - self._finished:
                    if job_id not in found:
                        found[job_id] = {"JobID": job_id, "State": "LEFT_QUEUE"}
                self._info_dict.update(found)
            else:
                self._info_dict.update(self.read_info(output))
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


def submission_parameters(params: dict) -> dict:
    """The launcher's resolved parameters as submitted: no GPU asked (a CPU partition) means no
    ``--gpus-per-node`` line, since many clusters refuse ``--gpus-per-node=0``."""
    if not params.get("gpus_per_node"):
        params = {**params, "gpus_per_node": None}
    return params


def poll_without_sacct_where_needed() -> None:
    """Make submitit poll job states with :class:`QueueStateWatcher` (in the process that submits)."""
    if not isinstance(SlurmJob.watcher, QueueStateWatcher):
        SlurmJob.watcher = QueueStateWatcher(delay_s=SlurmJob.watcher._delay_s)


def cluster_plugins() -> list:
    """Exactly one of submitit and Lightning requeues a preempted or timed-out Slurm job.

    Under submitit (``hydra/launcher=slurm``) submitit does: it catches USR2, pickles the job and requeues
    it, and the requeued job resumes from its own ``last.ckpt`` (``auto_resume``). Lightning's own
    requeue (on USR1) is then switched off. Under a plain ``sbatch`` Lightning keeps its default."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []
