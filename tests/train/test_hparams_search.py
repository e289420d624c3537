"""Hyper-parameter search: a real 2-trial Optuna search through `train.py -m hparams_search=optuna`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.compose import FAST

REPO = Path(__file__).resolve().parents[2]


def test_optuna_search_optimises_validation_accuracy_only(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=optuna",
        f"paths.log_dir={tmp_path}",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "trainer.max_epochs=1",
        *FAST,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    # FAST fixes data.batch_size on the command line, which takes it out of the search space
    assert {"model.optimizer.lr", "model.optimizer.weight_decay", "model.label_smoothing"} <= set(
        results["best_params"]
    )

    trials, learning_rates = [], []
    for job in (sweep / "0", sweep / "1"):
        metrics = json.loads((job / "metrics.json").read_text())
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert metrics["status"] == "completed"
        assert config["optimized_metric"] == "val/acc_best"
        # the search never evaluates the test split, so no test metric can reach the sweeper
        assert config["test"] is False and not [key for key in metrics if key.startswith("test/")]
        trials.append(metrics)
        learning_rates.append(config["model"]["optimizer"]["lr"])
    assert learning_rates[0] != learning_rates[1]  # two trials, sampled by Optuna
    assert results["best_value"] == pytest.approx(max(t["val/acc_best"] for t in trials))
