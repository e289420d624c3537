"""Hyper-parameter search: real Optuna searches through `train.py -m hparams_search=optuna` — 2 trials; 3 of which
some fail (recorded as failed, the search goes on); one in which none completes (still written down)."""

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


def run_search(tmp_path: Path, *overrides: str, base=FAST) -> tuple[subprocess.CompletedProcess, Path]:
    """A search of ``train.py -m hparams_search=optuna`` over ``base`` (the tiny ViT) with ``overrides``."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=optuna",
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=1",
        *base,
        *overrides,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    return done, sweep


def test_optuna_search_optimises_validation_accuracy_only(tmp_path):
    done, sweep = run_search(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2")
    assert done.returncode == 0, done.stderr[-3000:]

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


# the tiny ViT with its number of heads left to the test
ANY_HEADS = [o for o in FAST if not o.startswith("model.net.num_heads=")]


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    # num_heads=3 does not divide the tiny ViT's 16 channels: those trials fail while the model is built
    done, sweep = run_search(
        tmp_path,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "model.net.num_heads=choice(2,3)",
        base=ANY_HEADS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = {
        int(job.name): json.loads((job / "metrics.json").read_text())["status"]
        for job in sweep.iterdir()
        if job.name.isdigit()
    }
    assert sorted(statuses) == [0, 1, 2]  # every trial ran: the failure did not stop the search
    failed = [n for n, status in statuses.items() if status.startswith("failed: ")]
    assert failed and len(failed) < 3, statuses
    log = done.stdout + done.stderr  # Hydra logs to stdout
    assert log.count("Failed experiment: model: dim 16 is not divisible by num_heads 3") == len(failed)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["model.net.num_heads"] == 2


def test_a_search_in_which_no_trial_completed_still_writes_its_results(tmp_path):
    done, sweep = run_search(tmp_path, "hydra.sweeper.n_trials=1", "model.net.num_heads=3", base=ANY_HEADS)
    assert done.returncode != 0 and "no trial of the search completed" in done.stderr
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] is None and results["completed_trials"] == 0


def test_a_trial_without_a_finite_objective_is_a_failed_trial():
    from hydra.core.utils import JobReturn, JobStatus

    from runkit.sweeps import TrialResults

    def finished(value, status=JobStatus.COMPLETED):
        ret = JobReturn()
        ret.status, ret.return_value = status, value
        return ret

    class Launcher:
        def launch(self, job_overrides, initial_job_idx):
            return [
                finished(0.5),
                finished(float("nan")),
                finished(None),
                finished(RuntimeError("x"), JobStatus.FAILED),
            ]

    returns = TrialResults(Launcher()).launch([[]] * 4, initial_job_idx=10)
    assert returns[0].return_value == 0.5
    assert [r.status for r in returns[1:]] == [JobStatus.FAILED] * 3
    with pytest.raises(ValueError, match="trial 11 returned nan"):
        returns[1].return_value
    with pytest.raises(ValueError, match="trial 12 returned no objective .*never validated"):
        returns[2].return_value
    with pytest.raises(RuntimeError, match="x"):  # a crashed trial keeps its own error
        returns[3].return_value
