"""The run lifecycle on a preemptible cluster (README "Guarantees"): a checkpoint every epoch written
atomically, exact resume after SIGKILL, resuming only this run's checkpoints, one process per run dir,
exit codes that say what happened, safe loading, and clear errors for the remaining faults.

Signals, locks and exit codes are exercised on real ``train.py`` processes (started side by side to keep
the wall time down); the rest runs in-process on the same tiny config."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train as train_script
from runkit.checkpoint_loading import CorruptCheckpointError, UnsafeCheckpointError, load_checkpoint
from runkit.checkpoint_writing import atomic_torch_save
from runkit.config_validation import ConfigError
from runkit.data_order import EpochSeededSampler
from runkit.memory import MemoryEstimateError, check_memory
from runkit.run_config import CheckpointMismatchError
from runkit.run_dir import RunDirInUseError
from runkit.run_lock import RunDirLockedError, RunLock
from runkit.stopping import EXIT_SIGINT, EXIT_SIGTERM
from tests.runkit.conftest import PHASES
from tests.support.compose import FAST, TINY_VIT, compose_config
from tests.support.processes import EPOCHS, REPO, STEPS_PER_EPOCH, finish, launch, metrics_of


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_numbers(processes):
    rc, log = processes["resumed"]
    assert processes["killed_rc"] == -signal.SIGKILL
    assert rc == 0, log[-3000:]
    assert "taking over a stale lock" in log  # the killed process left its lock behind
    assert "auto_resume: continuing from" in log
    reference, resumed = metrics_of(processes["dirs"]["reference"]), metrics_of(processes["dirs"]["killed"])
    assert processes["reference"][0] == 0, processes["reference"][1][-3000:]
    for key in ("val/acc_best", "val/loss", "train/loss", "test/acc", "test/loss", "global_step"):
        assert resumed[key] == reference[key], key
    assert resumed["status"] == "completed" and resumed["global_step"] == EPOCHS * STEPS_PER_EPOCH


def test_sigkill_resume_with_workers_and_augmentation_gives_the_uninterrupted_numbers(processes):
    """Every worker's random stream (the per-image rotations) and the order are functions of (seed, epoch)."""
    rc, log = processes["workers_resumed"]
    assert processes["workers_killed_rc"] == -signal.SIGKILL
    assert rc == 0, log[-3000:]
    reference, resumed = (
        metrics_of(processes["dirs"]["workers_reference"]),
        metrics_of(processes["dirs"]["workers_killed"]),
    )
    assert processes["workers_reference"][0] == 0, processes["workers_reference"][1][-3000:]
    for key in ("val/acc_best", "val/loss", "train/loss", "test/acc", "test/loss", "global_step"):
        assert resumed[key] == reference[key], key


def test_last_checkpoint_holds_the_final_epoch_whatever_val_acc_did(processes):
    out = processes["dirs"]["reference"]
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["global_step"] == EPOCHS * STEPS_PER_EPOCH and last["epoch"] == EPOCHS - 1
    assert last["gevit_run_config"]["model"]["net"]["embed_dim"] == 16 and "gevit_rng_states" in last
    assert not list((out / "checkpoints").glob(".*tmp*"))  # no temporary file left behind
    assert not (out / "run.lock").exists()  # released at the end


def test_a_second_process_in_a_live_run_dir_is_refused(processes):
    rc, log = processes["intruder"]
    assert rc != 0
    holder = processes["sigterm_pid"]
    assert f"is in use by process {holder} on " in log and "hydra.run.dir" in log
    assert not (processes["dirs"]["sigterm"] / "metrics.json").read_text().count("RunDirLockedError")


def test_sigterm_and_sigint_exit_non_zero_with_status(processes):
    rc, log = processes["sigterm"]
    assert rc == EXIT_SIGTERM, log[-3000:]
    assert metrics_of(processes["dirs"]["sigterm"])["status"] == "interrupted: SIGTERM"
    rc, log = processes["sigint"]
    assert rc == EXIT_SIGINT, log[-3000:]
    assert metrics_of(processes["dirs"]["sigint"])["status"] == "interrupted: SIGINT"
    # the epoch-0 checkpoint is intact and resumable; the interrupted epoch was not half-saved
    last = load_checkpoint(processes["dirs"]["sigterm"] / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS_PER_EPOCH


@pytest.mark.parametrize("phase", PHASES)
def test_a_signal_at_any_point_of_a_run_exits_non_zero_with_status(processes, phase):
    rc, log = processes[phase]
    assert (processes["dirs"][phase] / "paused_at").is_file()
    name = "SIGTERM" if phase.startswith("sigterm") else "SIGINT"
    expected = EXIT_SIGTERM if name == "SIGTERM" else EXIT_SIGINT
    assert rc == expected, log[-3000:]
    assert metrics_of(processes["dirs"][phase])["status"] == f"interrupted: {name}"


def test_a_wrong_type_on_the_command_line_fails_at_once_naming_the_key(processes):
    rc, log = processes["badtype"]
    assert rc == 1
    assert "invalid config: trainer.max_epochs='abc': expected int or null" in log
    assert "data: " not in log  # refused before the data module was built


def test_evaluate_only_exits_zero_and_matches_the_training_run(processes, tmp_path):
    reference = metrics_of(processes["dirs"]["reference"])
    out = tmp_path / "eval"
    rc, log = finish(launch(out, "train=false", f"ckpt_path={reference['best_checkpoint']}"), out)
    assert rc == 0, log[-3000:]
    metrics = metrics_of(out)
    assert metrics["status"] == "completed" and metrics["test/acc"] == reference["test/acc"]
    # main() gives a sweeper nothing to optimise in an evaluate-only run
    cfg = compose_config(FAST + ["train=false", f"ckpt_path={reference['best_checkpoint']}"], tmp_path / "main")
    assert train_script.main.__wrapped__(cfg) is None


# ---- in-process: checkpoints that belong to another run, corrupt or unsafe files -------------------
def run(tmp_path: Path, *overrides: str, name: str = "run"):
    return train_script.run(compose_config(FAST + list(overrides), tmp_path / name))


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one_epoch")
    metrics, _ = run(tmp, "trainer.max_epochs=1")
    return tmp, metrics


def test_a_run_that_ends_before_validating_returns_nothing_with_a_warning(tmp_path, caplog):
    cfg = compose_config(FAST + ["++trainer.max_steps=2"], tmp_path / "short")
    assert train_script.main.__wrapped__(cfg) is None  # was: TypeError float(None), exit 1
    assert "ended before its first validation" in caplog.text
    metrics = metrics_of(tmp_path / "short")
    assert metrics["status"] == "completed" and metrics["val/acc_best"] is None and "test/acc" in metrics


def test_a_schedule_that_can_never_validate_is_refused_up_front(tmp_path):
    with pytest.raises(ConfigError, match="never validate"):
        run(tmp_path, "+trainer.limit_val_batches=0")


def test_resuming_with_other_model_data_or_optimiser_settings_is_refused(one_epoch, tmp_path):
    # a run killed after its first epoch (a completed one is refused earlier: tests/runkit/test_run_dir.py)
    shutil.copytree(one_epoch[0] / "run", tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()
    tmp = tmp_path
    for override, key in (
        ("model.net.embed_dim=32", "model.net.embed_dim"),
        ("data.train_size=192", "data.train_size"),
        ("model.optimizer.lr=0.01", "model.optimizer.lr"),
        ("seed=7", "seed"),
    ):
        with pytest.raises(CheckpointMismatchError) as info:
            run(tmp, "trainer.max_epochs=2", override)
        message = str(info.value)
        assert key in message and "auto_resume=false" in message and "hydra.run.dir" in message, message
    # the ways out work: a fresh start in the same dir
    fresh, _ = run(tmp, "trainer.max_epochs=1", "model.optimizer.lr=0.01", "auto_resume=false")
    assert fresh["global_step"] == STEPS_PER_EPOCH


def test_debug_checkpoints_are_never_resumed_by_a_real_run(tmp_path):
    fdr, _ = run(tmp_path, "debug=fdr", name="fdr")
    assert not (tmp_path / "fdr" / "checkpoints").exists() or not list((tmp_path / "fdr" / "checkpoints").iterdir())
    run(tmp_path, "trainer.max_epochs=1", "+trainer.limit_train_batches=2", name="limit")
    # the finished debug run is refused, not extended
    with pytest.raises(RunDirInUseError, match="trainer.limit_train_batches"):
        run(tmp_path, "trainer.max_epochs=2", name="limit")


def test_a_truncated_last_checkpoint_is_reported_with_the_fix(one_epoch, tmp_path):
    tmp, metrics = one_epoch
    broken = tmp_path / "run" / "checkpoints"
    broken.mkdir(parents=True)
    data = Path(metrics["last_checkpoint"]).read_bytes()
    (broken / "last.ckpt").write_bytes(data[: len(data) // 2])  # what a full disk used to leave
    with pytest.raises(CorruptCheckpointError, match=r"truncated or corrupt.*mv .*last.ckpt .*last.ckpt.corrupt"):
        run(tmp_path, "trainer.max_epochs=2")
    assert not (tmp_path / "run" / "metrics.json").exists()  # checked before anything is written


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_crafted_checkpoint_is_refused_not_run(one_epoch, tmp_path):
    tmp, _ = one_epoch
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, crafted)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_checkpoint(crafted)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        run(tmp_path, "train=false", f"ckpt_path={crafted}", name="eval")
    with pytest.raises(UnsafeCheckpointError):
        run(tmp_path, f"ckpt_path={crafted}", name="resume")
    assert not (REPO / "pwned.txt").exists() and not (tmp_path / "pwned.txt").exists()
    plain_pickle = tmp_path / "plain.ckpt"
    plain_pickle.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises((UnsafeCheckpointError, CorruptCheckpointError)):
        load_checkpoint(plain_pickle)


def test_a_checkpoint_of_another_model_family_names_its_model(one_epoch, tmp_path):
    _, metrics = one_epoch
    not_vit = [o for o in FAST if o not in TINY_VIT] + [
        "model=gevit",
        "train=false",
        f"ckpt_path={metrics['best_checkpoint']}",
    ]
    with pytest.raises(CheckpointMismatchError, match=r"holds a .*VisionTransformer.* \(model=vit\).*add model=vit"):
        train_script.run(compose_config(not_vit, tmp_path / "gevit"))
    with pytest.raises(CheckpointMismatchError, match=r"model.net.embed_dim=16"):
        run(tmp_path, "model.net.embed_dim=32", "train=false", f"ckpt_path={metrics['best_checkpoint']}")


# ---- locks, data order, memory -----------------------------------------------------------------
def test_run_lock_refuses_a_live_process_and_takes_over_a_dead_one(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        with pytest.raises(RunDirLockedError, match=f"process {sleeper.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # the pid is dead now: taken over with a warning
    assert "stale lock" in caplog.text and json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_the_training_order_is_a_function_of_seed_and_epoch():
    data = list(range(50))
    a, b = EpochSeededSampler(data, seed=3), EpochSeededSampler(data, seed=3)
    a.set_epoch(2)
    list(iter(b))  # b ran epoch 0 first: the order of epoch 2 must not depend on it
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == data
    a.set_epoch(3)
    assert list(a) != list(b)


def test_memory_estimate_refuses_a_batch_that_cannot_fit_and_names_one_that_does():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64 * 32 * 32, 10)
    )
    estimate = check_memory(net, (1, 32, 32), batch_size=8, use_gpu=False, available=2**40)
    per_sample = estimate["per_sample_bytes"]
    assert 64 * 32 * 32 * 4 <= per_sample <= 10 * 64 * 32 * 32 * 4  # the conv/relu outputs, not the weights
    available = estimate["fixed_bytes"] + 100 * per_sample
    with pytest.raises(MemoryEstimateError, match=r"data.batch_size=\d+ would fit.*memory_check=warn"):
        check_memory(net, (1, 32, 32), batch_size=1000, use_gpu=False, available=available)
    assert check_memory(net, (1, 32, 32), batch_size=1000, use_gpu=False, available=available, mode="warn")


def test_read_only_data_dir_and_data_dir_that_is_a_file(tmp_path, monkeypatch, caplog):
    import numpy as np

    from datamodules import DataFileError
    from datamodules.rotmnist import RotMNISTDataModule

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(np, "savez", read_only)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: read_only(self))
    RotMNISTDataModule._write_cache(tmp_path / "cache.npz", {"x": np.zeros(2)}, "key")  # warns, does not raise
    assert "could not write the RotMNIST cache" in caplog.text
    monkeypatch.undo()
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    with pytest.raises(DataFileError, match="is a file, not a folder"):
        RotMNISTDataModule(data_dir=str(a_file))
