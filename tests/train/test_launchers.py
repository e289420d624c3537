"""Hydra launchers: the Slurm config composes from environment variables; the local submitit launcher runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from runkit.config import compose
from tests.support.compose import FAST

REPO = Path(__file__).resolve().parents[2]


def test_slurm_launcher_reads_the_cluster_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEVIT_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("GEVIT_SLURM_ACCOUNT", "lab42")
    monkeypatch.setenv("GEVIT_SLURM_GPUS", "4")
    monkeypatch.setenv("GEVIT_SLURM_TIME_MIN", "720")
    cfg = compose(["hydra/launcher=slurm"], tmp_path, keep_hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    for key in ("submitit_folder", "name"):
        launcher.pop(key)  # these point at Hydra's runtime, resolved only when a sweep starts
    resolved = OmegaConf.to_container(OmegaConf.create(launcher), resolve=True)
    assert resolved["partition"] == "gpu-a100" and resolved["account"] == "lab42"
    assert resolved["gpus_per_node"] == 4 and resolved["tasks_per_node"] == 4  # one DDP process per GPU
    assert resolved["timeout_min"] == 720 and resolved["max_num_timeout"] == 3


def test_local_submitit_launcher_runs_a_two_job_sweep(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=local",
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=1",
        "seed=0,1",
        *FAST,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    seeds = sorted(json.loads((sweep / str(i) / "metrics.json").read_text())["seed"] for i in range(2))
    assert seeds == [0, 1]


def test_slurm_launcher_generates_the_expected_sbatch_file(tmp_path):
    record = tmp_path / "job.sbatch"
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "GEVIT_SLURM_PARTITION": "gpu-a100",
        "GEVIT_SLURM_ACCOUNT": "lab42",
        "GEVIT_SLURM_GPUS": "2",
        "GEVIT_SLURM_CPUS": "6",
        "GEVIT_SLURM_MEM_GB": "48",
        "GEVIT_SLURM_TIME_MIN": "720",
        "GEVIT_SLURM_SETUP": "source ~/venvs/gevit/bin/activate",
    }
    # the real launcher and executor, stopped where submitit would call sbatch (no cluster needed)
    cmd = [
        sys.executable,
        "scripts/sbatch_preview.py",
        "--output",
        str(record),
        "trainer=ddp",
        "trainer.devices=2",
        f"paths.log_dir={tmp_path}",
        "seed=0,1,2",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sbatch = record.read_text()
    lines = set(sbatch.splitlines())
    for expected in (
        "#SBATCH --partition=gpu-a100",
        "#SBATCH --account=lab42",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --mem=48GB",
        "#SBATCH --time=720",
        "#SBATCH --nodes=1",
        "#SBATCH --array=0-2%3",
        "source ~/venvs/gevit/bin/activate",
        "export SUBMITIT_EXECUTOR=slurm",
    ):
        assert expected in lines, f"{expected!r} not in the sbatch file:\n{sbatch}"
    # submitit asks Slurm for USR2 before the time limit: the signal it checkpoints and requeues on
    assert any(line.startswith("#SBATCH --signal=USR2@") for line in lines), sbatch
    # the job logs land in the sweep's own folder
    assert f"{tmp_path}/train/multiruns/" in sbatch and "/.submitit/" in sbatch


def test_lightning_does_not_requeue_jobs_that_submitit_manages(monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    import train as train_script

    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert train_script.cluster_plugins() == []  # plain sbatch: Lightning's own requeue stays on
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    (plugin,) = train_script.cluster_plugins()
    assert isinstance(plugin, SLURMEnvironment) and plugin.auto_requeue is False


def test_a_preempted_local_job_is_requeued_and_resumes_from_its_own_last_checkpoint(tmp_path):
    """debug=preempt sends the job USR2 at the start of epoch 1, as Slurm does before a time limit:
    submitit checkpoints and requeues it; the requeued job must continue in the same directory."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=local",
        "debug=preempt",
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=2",
        "seed=0",
        *FAST,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "debug" / "multiruns").iterdir()
    job = sweep / "0"
    assert (job / "simulated_preemption.done").is_file()
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_trained"] == 2
    log_text = (job / "debug.log").read_text()  # the job's log (task_name=debug), submitit's messages included
    assert "Caught signal SIGUSR2" in log_text and "Requeued job" in log_text
    assert f"auto_resume: continuing from {job / 'checkpoints' / 'last.ckpt'}" in log_text
    # one sweep directory, one job directory: the requeued job did not start a new Hydra directory
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]
