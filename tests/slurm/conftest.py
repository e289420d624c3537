"""A real one-node Slurm for tests/slurm/: the one ``SLURM_CONF`` names if it answers (``.ci/run`` starts it with
scripts/local_slurm.sh), else one started here with the same script and stopped at the end of the session.
Where none can start (no root, no apt, no packages) every test here is skipped with one line saying why."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def answers(conf: str) -> bool:
    try:
        done = subprocess.run(["sinfo", "-h"], env={**os.environ, "SLURM_CONF": conf}, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory) -> dict:
    """The environment of a command that submits to the cluster: its SLURM_CONF and a CPU partition's settings
    (no GPU, one CPU and a little memory per task, so two jobs run at once on two cores)."""
    conf, folder = os.environ.get("SLURM_CONF"), None
    if not (conf and answers(conf)):
        folder = tmp_path_factory.mktemp("local-slurm")
        started = subprocess.run(
            ["bash", "scripts/local_slurm.sh", "start"],
            cwd=REPO,
            env={**os.environ, "LOCAL_SLURM_DIR": str(folder)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if started.returncode != 0:
            reason = (started.stderr.strip().splitlines() or ["scripts/local_slurm.sh start failed"])[-1]
            pytest.skip(f"no local Slurm ({reason})")
        conf = started.stdout.strip().rpartition("=")[2]
    yield {
        **os.environ,
        "SLURM_CONF": conf,
        "GEVIT_SLURM_GPUS": "0",
        "GEVIT_SLURM_CPUS": "1",
        "GEVIT_SLURM_MEM_GB": "1",
        "GEVIT_SLURM_TIME_MIN": "20",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "CUDA_VISIBLE_DEVICES": "",
    }
    if folder is not None:
        subprocess.run(
            ["bash", "scripts/local_slurm.sh", "stop"],
            cwd=REPO,
            env={**os.environ, "LOCAL_SLURM_DIR": str(folder)},
            capture_output=True,
            timeout=120,
        )
