"""The training pipeline end to end on the embedded data: honest splits, outputs, resume, eval-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import train as train_script
from datamodules import HonestSplitError
from tests.support.compose import FAST, compose_config

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *overrides: str, name: str = "run"):
    cfg = compose_config(FAST + list(overrides), tmp_path / name)
    return train_script.run(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch training run shared by the tests that inspect its outputs."""
    tmp = tmp_path_factory.mktemp("trained")
    metrics, objects = run(tmp, "trainer.max_epochs=2", "seed=3")
    return tmp / "run", metrics, objects


def test_run_writes_every_output(trained):
    out, metrics, _ = trained
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in (
        "val/acc_best",
        "test/acc",
        "test/loss",
        "model/params",
        "config_path",
        "git_commit",
        "rotation_robustness",
        "best_checkpoint",
        "test/invariance_error_rot90",
        "time/elapsed_s",
    ):
        assert key in on_disk, key
    assert on_disk["status"] == "completed"
    assert on_disk["model/params"] == sum(p.numel() for p in trained[2]["model"].parameters())
    assert Path(on_disk["config_path"]).is_file()
    assert Path(on_disk["best_checkpoint"]).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert on_disk["tested_checkpoint"] == on_disk["best_checkpoint"]
    robustness = on_disk["rotation_robustness"]
    assert robustness["angles"] == [0, 45, 90, 135, 180, 225, 270, 315]
    assert robustness["num_samples"] == 64
    csv_lines = (out / "rotation_robustness.csv").read_text().splitlines()
    assert csv_lines[0] == "angle_deg,accuracy,invariance_error,num_samples" and len(csv_lines) == 9
    assert (out / "rotation_robustness.png").stat().st_size > 5_000
    assert list((out / "csv").glob("version_*/metrics.csv"))
    assert "val/acc" in (out / "config_tree.log").read_text() or (out / "config_resolved.yaml").is_file()
    # the selected checkpoint carries its model config, so later stages can rebuild it
    ckpt = torch.load(on_disk["best_checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["gevit_model_config"]["net"]["_target_"] == "gevit.models.VisionTransformer"


def test_test_loader_is_built_once_after_fit(trained):
    _, _, objects = trained
    assert objects["datamodule"].test_loader_calls == 1


def test_requesting_the_test_loader_during_fit_is_refused(tmp_path):
    class Peek(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.datamodule.test_dataloader()

    cfg = compose_config(FAST + ["trainer.max_epochs=1"], tmp_path)
    with pytest.raises(HonestSplitError, match="validation split only"):
        original = train_script.instantiate_collection
        try:
            train_script.instantiate_collection = lambda c, kind: (
                original(c, kind) + ([Peek()] if kind == "callbacks" else [])
            )
            train_script.run(cfg)
        finally:
            train_script.instantiate_collection = original


def test_checkpoint_selection_uses_validation(trained):
    _, metrics, objects = trained
    callback = objects["trainer"].checkpoint_callback
    assert callback.monitor == "val/acc" and callback.mode == "max"
    assert metrics["val/acc_best"] == pytest.approx(float(callback.best_model_score))


def test_eval_only_reproduces_the_test_accuracy(trained, tmp_path):
    _, metrics, _ = trained
    again, objects = run(tmp_path, "train=false", f"ckpt_path={metrics['best_checkpoint']}", "seed=99")
    assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-7)
    assert again["rotation_robustness"]["accuracy"] == pytest.approx(metrics["rotation_robustness"]["accuracy"])
    assert objects["datamodule"].test_loader_calls == 1


def test_resume_from_last_checkpoint_continues_the_run(tmp_path):
    first, _ = run(tmp_path, "trainer.max_epochs=1", name="a")
    steps_per_epoch = first["global_step"]
    resumed, _ = run(tmp_path, "trainer.max_epochs=2", f"ckpt_path={first['last_checkpoint']}", name="a")
    assert resumed["global_step"] == 2 * steps_per_epoch  # epoch 0 is not trained again
    assert resumed["epochs_trained"] == 2
    # the training clock continues from the checkpoint: the resumed run's wall time includes the first segment's
    assert resumed["time/elapsed_s"] > first["time/elapsed_s"] > 0
    # and the run's recorded wall time counts the first segment too (duration_s: this segment only)
    assert resumed["run_duration_s"] >= resumed["duration_s"] + first["time/elapsed_s"] - 0.01
    assert first["run_duration_s"] == first["duration_s"]
    auto, _ = run(tmp_path, "trainer.max_epochs=3", "auto_resume=true", name="a")
    assert auto["global_step"] == 3 * steps_per_epoch


def test_eval_only_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="train=false needs ckpt_path"):
        run(tmp_path, "train=false")


def test_fast_dev_run_tests_the_final_weights(tmp_path):
    metrics, objects = run(tmp_path, "debug=fdr")
    assert metrics["status"] == "completed" and metrics["tested_checkpoint"] is None
    assert "test/acc" in metrics


def test_cli_default_command_and_optimized_metric(tmp_path):
    """`python train.py ...` as a user types it (tiny), plus the error for an unknown config choice."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "cli"
    cmd = [sys.executable, "train.py", f"hydra.run.dir={out}", "trainer.max_epochs=1", *FAST]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0.0 <= metrics["test/acc"] <= 1.0
    assert (out / ".hydra" / "config.yaml").is_file()

    bad = subprocess.run(
        [sys.executable, "train.py", "data=nope", f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "Could not find 'data/nope'" in bad.stderr and "rotmnist" in bad.stderr  # lists the options


def test_main_returns_the_optimized_metric(tmp_path, monkeypatch):
    cfg = compose_config(FAST + ["trainer.max_epochs=1"], tmp_path)
    captured = {}
    real_run = train_script.run

    def spy(c):
        metrics, objects = real_run(c)
        captured.update(metrics)
        return metrics, objects

    monkeypatch.setattr(train_script, "run", spy)
    value = train_script.main.__wrapped__(cfg)
    assert value == pytest.approx(captured["val/acc_best"])


def test_multirun_sweep_writes_one_directory_per_job(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    # the default sweep directory (logs/<task>/multiruns/<time>/<job>) under a temporary log_dir
    cmd = [sys.executable, "train.py", "-m", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1", "seed=0,1", *FAST]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    seeds = sorted(json.loads((sweep / str(i) / "metrics.json").read_text())["seed"] for i in range(2))
    assert seeds == [0, 1]
