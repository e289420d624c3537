"""Sweeps on a real Slurm (a one-node cluster of scripts/local_slurm.sh, no accounting, a CPU partition), as a
researcher runs them: ``python train.py -m hydra/launcher=slurm ...``. Each test is one sweep of a tiny ViT:

- a job array completes, a job of it that fails says so in the sweep's exit code, its metrics.json and the
  results table, and the missing accounting is reported once;
- ``scontrol requeue`` in the middle of an epoch: the job resumes in its own folder and ends with the numbers
  of an untouched twin, bit for bit;
- a two-minute time limit: Slurm's USR2 ahead of it makes submitit requeue the job, which resumes in its folder;
  once ``max_num_timeout`` is spent the job ends with an honest status and the sweep fails;
- ``trainer=ddp`` as two Slurm tasks on CPU (gloo): one run, tested as a single process tests it.

Run them with ``pytest -m slurm`` (``.ci/run`` does, after ``bash scripts/local_slurm.sh start``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.compose import FAST

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SACCT_NOTICE = "sacct failed (Slurm accounting storage is disabled)"
# epochs of 2,048 steps, many seconds even on a fast quiet machine, so that a requeue sent a second after
# epoch 0 ends lands well inside epoch 1 (the scheduler's latency and the signal's trip take about a second)
SLOW_EPOCHS = ["data.train_size=4096", "data.batch_size=2"]


def sweep_command(tmp_path: Path, *overrides: str) -> list[str]:
    return [sys.executable, "train.py", "-m", "hydra/launcher=slurm", f"paths.log_dir={tmp_path}", *FAST, *overrides]


def only_sweep(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    return sweep


def jobs_of(sweep: Path) -> dict[str, Path]:
    """{the job's overrides joined: its folder} for every job folder of the sweep."""
    import yaml

    return {
        " ".join(o for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) if "=" in o): job
        for job in sweep.iterdir()
        if (job / ".hydra").is_dir()
    }


def metrics_of(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def wait_for(path_glob: str, root: Path, process: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{path_glob} did not appear below {root} within {timeout} s")


def test_an_array_runs_and_a_failing_job_says_so_in_exit_code_metrics_and_table(tmp_path, slurm_env):
    # num_heads=3 does not divide the tiny ViT's 16 channels: those jobs fail while their model is built
    heads = [o for o in FAST if not o.startswith("model.net.num_heads=")]
    cmd = sweep_command(tmp_path, *heads, "model.net.num_heads=2,3", "seed=0,1", "trainer.max_epochs=1")
    done = subprocess.run(cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-3000:]
    assert "dim 16 is not divisible by num_heads 3" in done.stderr
    assert log.count(SACCT_NOTICE) == 1  # no accounting: said once, then squeue

    sweep = only_sweep(tmp_path)
    submissions = list((sweep / ".submitit").glob("*/*_submission.sh"))
    assert len(submissions) == 1 and "#SBATCH --array=0-3%4" in submissions[0].read_text()
    assert "--gpus-per-node" not in submissions[0].read_text()  # a CPU partition: no GPU asked
    jobs = jobs_of(sweep)
    assert len(jobs) == 4
    for overrides, job in jobs.items():
        status = metrics_of(job)["status"]
        if "num_heads=3" in overrides:
            assert status == "failed: ConfigError: model: dim 16 is not divisible by num_heads 3", overrides
        else:
            assert status == "completed", overrides

    table = subprocess.run(
        [sys.executable, "-m", "scripts.results_table", str(sweep), "--metrics", "test/acc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    rows = {line.split(" | ")[0]: line for line in table.stdout.splitlines() if line.startswith("| ")}
    assert re.fullmatch(r"\| 2 \| \d+\.\d\d ± \d+\.\d\d \(2\) \|", rows["| 2"]), rows
    assert rows["| 3"] == "| 3 | — (0/2) |"
    assert "Not completed: 2 of 4 runs." in table.stdout and "4 runs (2 not completed)" in table.stderr


def test_a_job_requeued_mid_epoch_ends_with_the_numbers_of_an_untouched_twin(tmp_path, slurm_env):
    cmd = sweep_command(tmp_path, *SLOW_EPOCHS, "seed=3,3", "trainer.max_epochs=2")
    sweep_process = subprocess.Popen(
        cmd, cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # epoch 0 of job 0 is over (its last.ckpt is written after validation): requeue it early in epoch 1
        wait_for("train/multiruns/*/0/checkpoints/last.ckpt", tmp_path, sweep_process)
        time.sleep(1.0)
        (array_task,) = [p.name for p in only_sweep(tmp_path).glob(".submitit/*_0")]
        subprocess.run(["scontrol", "requeue", array_task], env=slurm_env, check=True, timeout=60)
        stdout, stderr = sweep_process.communicate(timeout=900)
    finally:
        if sweep_process.poll() is None:
            sweep_process.kill()
    assert sweep_process.returncode == 0, (stdout + stderr)[-3000:]

    sweep = only_sweep(tmp_path)
    requeued, twin = metrics_of(sweep / "0"), metrics_of(sweep / "1")
    assert requeued["status"] == twin["status"] == "completed"
    for key in ("val/acc_best", "val/loss", "train/loss", "test/acc", "test/loss", "global_step", "epochs_trained"):
        assert requeued[key] == twin[key], key  # CPU, one thread: bit-equal
    # one run folder per job, and the requeued job's log holds its two attempts one after the other
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    log = (sweep / "0" / "train.log").read_text()
    assert (
        log.count("auto_resume: continuing from") == 1
        and (sweep / "1" / "train.log").read_text().count("auto_resume") == 0
    )
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", log, flags=re.MULTILINE)
    assert stamps == sorted(stamps) and len(stamps) > 4
    assert "epoch 1/2" in log.split("auto_resume: continuing from")[0]  # the requeue came after epoch 0 ...
    assert "epoch 2/2" not in log.split("auto_resume: continuing from")[0]  # ... and before epoch 1 ended


def test_a_time_limit_requeues_through_usr2_until_max_num_timeout_then_says_so(tmp_path, slurm_env):
    """--time=2 and --signal=USR2@50: Slurm checks time limits every 30 s and signals at the check before the
    warning time, so 40-70 s into each attempt (a signal before submitit's handler is installed, some seconds
    after the start, would kill the job). With max_num_timeout=1 the first signal requeues the job, which resumes
    in its folder; the second ends it, with an honest status."""
    env = {**slurm_env, "GEVIT_SLURM_TIME_MIN": "2"}
    cmd = sweep_command(
        tmp_path,
        "seed=0",
        "trainer.max_epochs=100000",  # short epochs (~0.1 s on a quiet machine): more than two attempts can train
        "hydra.launcher.signal_delay_s=50",
        "hydra.launcher.max_num_timeout=1",
    )
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    sweep = only_sweep(tmp_path)
    log = (sweep / "0" / "train.log").read_text()  # the job's log, submitit's lines included
    assert done.returncode == 1, log[-3000:]
    assert "#SBATCH --signal=USR2@50" in next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert log.count("Caught signal SIGUSR2 on") == 2 and log.count("this job is timed-out") == 2, log[-3000:]
    assert log.count("Requeued job") == 1 and "Job not requeued because: timed-out too many times" in log
    first, second = log.split("Requeued job")
    # the second attempt continues from the first one's last finished epoch (under a heavy load the first
    # attempt may have spent its time starting up and finished none: then there is nothing to resume)
    assert ("auto_resume: continuing from" in second) == ("epoch 1/1000" in first), log[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"]
    status = metrics_of(sweep / "0")["status"]
    assert status == "failed: UncompletedJobError: Job not requeued because: timed-out too many times.", status
    assert "timed-out too many times" in done.stderr


def test_ddp_as_two_slurm_tasks_makes_one_run_tested_as_a_single_process_tests_it(tmp_path, slurm_env):
    import train as train_script
    from tests.support.compose import compose_config

    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false"]
    cmd = sweep_command(tmp_path, *ddp, "trainer.max_epochs=1", "data.num_workers=0", "seed=0")
    done = subprocess.run(cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    sweep = only_sweep(tmp_path)
    assert "#SBATCH --ntasks-per-node=2" in next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert len(list((sweep / ".submitit").glob("*/*_1_log.out"))) == 1  # the second task ran
    assert list(sweep.rglob("metrics.json")) == [sweep / "0" / "metrics.json"]
    metrics = metrics_of(sweep / "0")
    assert metrics["status"] == "completed" and metrics["global_step"] == 2  # 256 images / (64 x 2 processes)

    single, _ = train_script.run(
        compose_config(FAST + ["train=false", f"ckpt_path={metrics['best_checkpoint']}"], tmp_path / "single")
    )
    assert single["test/acc"] == metrics["test/acc"]
    assert single["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
