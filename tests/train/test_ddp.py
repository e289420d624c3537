"""trainer=ddp on CPU: two processes (gloo) train a few steps as one run — one metrics.json, one set of
checkpoints, run log lines from rank 0 only — and test exactly as a single process evaluating the same
checkpoint does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train as train_script
from tests.support.compose import FAST, compose_config

REPO = Path(__file__).resolve().parents[2]
DDP_CPU = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.sync_batchnorm=false",
    "trainer.max_epochs=1",
    "data.num_workers=0",
]


# An odd test set, and a robustness budget that is not a multiple of the process count: every image counts once.
ODD = ["data.test_size=99", "data.eval_batch_size=32", "callbacks.rotation_robustness.max_samples=45"]


def test_two_cpu_processes_make_one_run(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", f"hydra.run.dir={out}", "print_config=false", *FAST, *DDP_CPU, *ODD]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2  # 256 images / (64 x 2 processes)
    assert list(tmp_path.rglob("metrics.json")) == [out / "metrics.json"]
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and checkpoints[-1] == "last.ckpt" and checkpoints[0].startswith("best-")
    assert not (out / "run.lock").exists()

    log = (out / "train.log").read_text()
    assert log.count("[train][INFO] - data:") == 1 and log.count("parameters:") == 1
    assert "GLOBAL_RANK: 1" not in log  # Lightning's per-process lines: rank 0's only

    single, _ = train_script.run(
        compose_config(FAST + ODD + ["train=false", f"ckpt_path={metrics['best_checkpoint']}"], tmp_path / "single")
    )
    assert single["test/acc"] == metrics["test/acc"]
    assert single["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    robustness, alone = metrics["rotation_robustness"], single["rotation_robustness"]
    assert robustness["num_samples"] == alone["num_samples"] == 45
    assert robustness["accuracy"] == alone["accuracy"] and single["test/rot_acc_mean"] == metrics["test/rot_acc_mean"]
    assert robustness["invariance_error"] == pytest.approx(alone["invariance_error"], rel=1e-5)
