"""Hydra launchers and sweeps: the Slurm config composes from environment variables and is checked before
anything is submitted (CPU partitions included), job states are polled without accounting, a used sweep folder
is refused, the local submitit launcher runs and requeues. tests/slurm/ runs the same against a real Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runkit.config import compose
from runkit.config_validation import ConfigError
from runkit.slurm import cluster_plugins
from tests.support.compose import FAST

REPO = Path(__file__).resolve().parents[2]


def test_slurm_launcher_reads_the_cluster_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GEVIT_SLURM_PARTITION", "gpu-a100")
    monkeypatch.setenv("GEVIT_SLURM_ACCOUNT", "lab42")
    monkeypatch.setenv("GEVIT_SLURM_GPUS", "4")
    monkeypatch.setenv("GEVIT_SLURM_TIME_MIN", "720")
    cfg = compose(["hydra/launcher=slurm", "trainer=ddp"], tmp_path, keep_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.gevit_sweeps.SlurmLauncher"
    assert launcher.partition == "gpu-a100" and launcher.account == "lab42"
    assert launcher.gpus_per_node == 4 and launcher.tasks_per_node == 4  # one DDP process per device (trainer.devices)
    assert launcher.timeout_min == 720 and launcher.max_num_timeout == 3
    assert compose(["hydra/launcher=slurm"], tmp_path, keep_hydra=True).hydra.launcher.tasks_per_node == 1


@pytest.mark.parametrize(
    "env, overrides, message",
    [
        ({"GEVIT_SLURM_CPUS": "0"}, [], "GEVIT_SLURM_CPUS='0': Slurm needs a whole number >= 1"),
        ({"GEVIT_SLURM_GPUS": "abc"}, [], "GEVIT_SLURM_GPUS='abc': Slurm needs a whole number >= 0"),
        ({"GEVIT_SLURM_MEM_GB": "-4"}, [], "GEVIT_SLURM_MEM_GB='-4': Slurm needs a number > 0"),
        ({"GEVIT_SLURM_TIME_MIN": "0.5"}, [], "GEVIT_SLURM_TIME_MIN='0.5': Slurm needs a whole number >= 1"),
        ({}, ["trainer.devices=auto"], "trainer.devices='auto': Slurm needs a whole number >= 1 (one Slurm task"),
        ({"GEVIT_SLURM_GPUS": "0"}, ["trainer=gpu"], "GEVIT_SLURM_GPUS=0 asks for no GPU, but trainer.accelerator=gpu"),
        ({"GEVIT_SLURM_GPUS": "2"}, ["trainer=ddp"], "trainer.devices=4 processes per node, but GEVIT_SLURM_GPUS=2"),
        ({}, ["hydra.launcher.nodes=0"], "hydra.launcher.nodes=0: Slurm needs a whole number >= 1"),
    ],
)
def test_slurm_settings_slurm_would_refuse_are_named_before_submission(monkeypatch, tmp_path, env, overrides, message):
    from runkit.slurm import check_launcher

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = compose(["hydra/launcher=slurm", *overrides], tmp_path, keep_hydra=True)
    with pytest.raises(ConfigError, match="invalid Slurm setting: " + message.replace("(", r"\(")):
        check_launcher(cfg)


def test_a_cpu_partition_asks_for_no_gpu_and_one_task_per_device(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "GEVIT_SLURM_GPUS": "0", "GEVIT_SLURM_CPUS": "2"}
    record = tmp_path / "job.sbatch"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    cmd = [sys.executable, "-m", "scripts.sbatch_preview", "--output", str(record), f"paths.log_dir={tmp_path}", *ddp]
    done = subprocess.run([*cmd, "seed=0,1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sbatch = record.read_text()
    assert "--gpus-per-node" not in sbatch and "--gres" not in sbatch, sbatch
    assert "#SBATCH --ntasks-per-node=2" in sbatch.splitlines()  # trainer.devices CPU processes, one task each


def test_job_states_come_from_squeue_where_sacct_fails_with_one_warning(tmp_path, monkeypatch, caplog):
    """A cluster without accounting: sacct fails on every call; the watcher says so once and reads squeue."""
    from runkit.slurm import QueueStateWatcher

    calls = tmp_path / "calls"
    for name, script in {
        "sacct": "echo 'Slurm accounting storage is disabled' >&2; exit 1",
        "squeue": "printf '7_0|RUNNING|node1\\n7_[2-3]|PENDING|\\n'",
    }.items():
        (tmp_path / name).write_text(f"#!/bin/sh\necho {name} >> {calls}\n{script}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    watcher = QueueStateWatcher(delay_s=600)
    for job in ("7_0", "7_1", "7_2", "7_3"):
        watcher.register_job(job)
    with caplog.at_level("WARNING", logger="runkit.slurm"):
        for _ in range(3):
            watcher.update()
    assert [r.getMessage() for r in caplog.records if "sacct failed" in r.getMessage()] == [
        "sacct failed (Slurm accounting storage is disabled): this cluster keeps no job accounting, so job states "
        "are read from squeue from now on (this warning is not repeated)"
    ]
    assert calls.read_text().split() == ["sacct", "squeue", "squeue", "squeue"]
    states = {job: watcher.get_state(job, mode="cache") for job in ("7_0", "7_1", "7_2", "7_3")}
    assert states == {"7_0": "RUNNING", "7_1": "LEFT_QUEUE", "7_2": "PENDING", "7_3": "PENDING"}
    assert watcher.is_done("7_1", mode="cache") and not watcher.is_done("7_0", mode="cache")


def sweep_config(sweep_dir: Path, overrides: list[str], sweeper: str = "BasicSweeper"):
    targets = {
        "BasicSweeper": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "OptunaSweeper": "hydra_plugins.gevit_sweeps.OptunaSweeper",
    }
    hydra = {
        "sweep": {"dir": str(sweep_dir)},
        "sweeper": {"_target_": targets[sweeper]},
        "overrides": {"task": overrides},
    }
    return OmegaConf.create({"hydra": hydra})


def test_a_sweep_dir_holding_another_sweep_is_refused_and_the_same_sweep_may_continue(tmp_path):
    from runkit.sweeps import claim_sweep_dir

    sweep = tmp_path / "sweep"
    claim_sweep_dir(sweep_config(sweep, ["seed=0,1"]))
    (sweep / "0" / ".hydra").mkdir(parents=True)
    record = (sweep / "sweep.json").read_text()
    with pytest.raises(ConfigError, match=r"already holds the records of the sweep `seed=0,1` \(job folders 0\)"):
        claim_sweep_dir(sweep_config(sweep, ["seed=2,3"]))
    assert (sweep / "sweep.json").read_text() == record  # nothing written
    claim_sweep_dir(sweep_config(sweep, ["seed=0,1"]))  # the same sweep again: each job resumes its own run
    with pytest.raises(ConfigError, match="already holds"):  # a search is never the same jobs twice
        claim_sweep_dir(sweep_config(sweep, ["seed=0,1"], "OptunaSweeper"))
    # a folder of a sweep started before sweep.json existed: recognised by its job folders
    old = tmp_path / "old"
    (old / "3").mkdir(parents=True)
    (old / "3" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"the records of an earlier sweep \(job folders 3\)"):
        claim_sweep_dir(sweep_config(old, ["seed=0"]))
    claim_sweep_dir(sweep_config(tmp_path / "empty", ["seed=0"]))  # new folder: claimed


def test_a_second_sweep_into_the_same_sweep_dir_stops_before_running(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0" / ".hydra").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text('{"status": "completed"}')
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path}", "seed=5,6", *FAST]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"ConfigError: hydra.sweep.dir={sweep} already holds")
    assert sorted(p.name for p in sweep.iterdir()) == ["0"] and (sweep / "0" / "metrics.json").read_text() == (
        '{"status": "completed"}'
    )


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
        "-m",
        "scripts.sbatch_preview",
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

    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert cluster_plugins() == []  # plain sbatch: Lightning's own requeue stays on
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    (plugin,) = cluster_plugins()
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
