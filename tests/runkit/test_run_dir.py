"""No lost records (runkit/run_dir.py): a finished run is never rewritten by a rerun, a refused rerun writes
nothing, ``auto_resume=false`` sets old records aside, schedules that train nothing are refused, and a run cut
short inside an epoch is extended exactly. Real ``train.py`` processes where Hydra itself writes into the run
directory; in-process runs for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train as train_script
from runkit.config_validation import ConfigError
from runkit.run_lock import RunDirLockedError, RunLock
from tests.support.compose import FAST, compose_config
from tests.support.processes import EPOCHS, STEPS_PER_EPOCH, finish, launch, metrics_of

COMPARED = ("val/acc_best", "val/loss", "train/loss", "test/acc", "test/loss", "global_step")


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (its log and lock aside), by relative path."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in ("run.lock",)
    }


@pytest.fixture
def finished(processes):
    return processes["dirs"]["finished"]


def test_rerunning_a_finished_run_says_so_and_touches_nothing(finished):
    before = snapshot(finished)
    rc, log = finish(launch(finished, "trainer.max_epochs=1"), finished)
    assert rc == 0, log[-3000:]
    assert "already holds this run, completed" in log and "nothing changed" in log
    assert snapshot(finished) == before  # metrics.json, config_resolved.yaml, .hydra/, checkpoints, log


def test_a_refused_rerun_writes_nothing(finished):
    before = snapshot(finished)
    rc, log = finish(launch(finished, "trainer.max_epochs=1", "model.optimizer.lr=0.5"), finished)
    assert rc == 1, log[-3000:]
    assert "holds a completed run with other settings" in log and "model.optimizer.lr" in log
    assert "0.5 now" in log and "hydra.run.dir" in log
    assert snapshot(finished) == before


def test_auto_resume_false_sets_the_old_run_aside(processes, tmp_path):
    out = processes["dirs"]["aside"]
    old = snapshot(out)
    rc, log = finish(launch(out, "trainer.max_epochs=1", "auto_resume=false", "seed=7"), out)
    assert rc == 0, log[-3000:]
    aside = list(out.parent.glob("aside.replaced-*"))
    assert len(aside) == 1 and snapshot(aside[0]) == old  # nothing deleted, nothing changed
    assert metrics_of(out)["seed"] == 7 and metrics_of(out)["status"] == "completed"


def test_extending_a_finished_run_continues_it_exactly(processes, tmp_path):
    """1 epoch, then the same command with EPOCHS epochs: the numbers of a run that trained them at once."""
    out = processes["dirs"]["extended"]
    rc, log = finish(launch(out), out)
    assert rc == 0, log[-3000:]
    assert "auto_resume: continuing from" in log
    extended, reference = metrics_of(out), metrics_of(processes["dirs"]["reference"])
    assert {k: extended[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}


def test_a_run_cut_short_inside_an_epoch_is_extended_exactly(processes, tmp_path):
    """max_steps stops in the middle of epoch 1: last.ckpt keeps epoch 0, and the extension replays epoch 1
    whole (global_step counts every batch once)."""
    out = tmp_path / "run"
    cut = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2
    first = train_script.run(compose_config(FAST + [f"trainer.max_epochs={EPOCHS}", f"++trainer.max_steps={cut}"], out))
    assert first[0]["global_step"] == cut
    metrics, _ = train_script.run(compose_config(FAST + [f"trainer.max_epochs={EPOCHS}"], out))
    assert metrics["global_step"] == EPOCHS * STEPS_PER_EPOCH
    reference = metrics_of(processes["dirs"]["reference"])
    assert {k: metrics[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}


@pytest.mark.parametrize("key", ["max_epochs", "max_steps"])
def test_a_schedule_that_trains_nothing_is_refused(key, tmp_path):
    with pytest.raises(ConfigError, match=rf"trainer.{key}=0: this run would train nothing"):
        train_script.run(compose_config(FAST + [f"++trainer.{key}=0"], tmp_path / "run"))
    # a fresh folder (a sweep job's) records why it holds no result
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert recorded["status"].startswith(f"failed: ConfigError: trainer.{key}=0")


def test_a_job_refused_for_its_options_leaves_another_runs_records_alone(tmp_path):
    used = tmp_path / "used"
    (used / "checkpoints").mkdir(parents=True)
    (used / "config_resolved.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError):
        train_script.run(compose_config(FAST + ["++trainer.max_epochs=0"], used))
    assert not (used / "metrics.json").exists()


# ---- the lock -----------------------------------------------------------------------------------------------
def test_a_lock_that_is_not_an_object_is_replaced_with_a_warning(tmp_path, caplog):
    for content in ("[1, 2]", '"text"', "{}", "not json"):
        (tmp_path / "run.lock").write_text(content)
        lock = RunLock(tmp_path)
        lock.acquire()
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        lock.release()
    assert "unreadable lock" in caplog.text


def test_a_lock_whose_pid_was_reused_is_taken_over(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_text = {"pid": sleeper.pid, "host": os.uname().nodename, "started_unix": time.time() - 3600}
        (tmp_path / "run.lock").write_text(json.dumps(lock_text))
        lock = RunLock(tmp_path)
        lock.acquire()  # the pid is alive, but its process started an hour after the lock was written
        assert "pid now belongs to a process started later" in caplog.text
        lock.release()
        (tmp_path / "run.lock").write_text(json.dumps({**lock_text, "started_unix": time.time()}))
        with pytest.raises(RunDirLockedError, match=r"its pid was reused.*delete .*run\.lock"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
