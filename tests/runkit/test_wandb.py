"""W&B: runs named from their overrides, grouped per sweep, tagged; parameters and images/s in the
summary; the rotation curve as a table. Offline only (no network, no credentials)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write

import train as train_script
from runkit.naming import naming_overrides, run_identity
from tests.support.compose import FAST, compose_config


def test_names_leave_out_paths_and_logging_details():
    overrides = [
        "model.group=p8",
        "seed=1",
        "model.backbone.ckpt_path=/runs/a/best.ckpt",
        "data.data_dir=/data",
        "logger=wandb",
        "paths.log_dir=/tmp/x",
        "hydra.sweep.dir=logs/x",
        "+trainer.limit_train_batches=2",
        "model/aggregator=lambda",
    ]
    assert naming_overrides(overrides) == [
        "model.group=p8",
        "seed=1",
        "trainer.limit_train_batches=2",
        "model/aggregator=lambda",
    ]


def test_identity_of_a_sweep_job(tmp_path):
    cfg = compose_config(
        [
            "experiment=posthoc_rotmnist_mini",
            "model.group=p4m",
            "model/aggregator=lambda",
            "model.regime=aggregator_only",
            "seed=2",
        ],
        tmp_path / "job",
    )
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.mode = "MULTIRUN"
    with open_dict(cfg):  # a job of a sweep under logs/<task>/multiruns/<stamp>/<sub-sweep>/<num>
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.output_dir = str(
            tmp_path / "logs" / cfg.task_name / "multiruns" / "2026-01-01_00-00-00" / "learned" / "3"
        )
    identity = run_identity(cfg)
    assert identity["group"] == f"{cfg.task_name}/2026-01-01_00-00-00"
    assert (
        identity["name"]
        == "experiment=posthoc_rotmnist_mini,model.group=p4m,model/aggregator=lambda,model.regime=aggregator_only,seed=2"
    )
    # with the sweep's multirun.yaml (Hydra writes it before the jobs start) only the swept keys name the run
    sweep_dir = Path(cfg.paths.output_dir).parent
    sweep_dir.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "hydra": {
                    "overrides": {
                        "task": [
                            "experiment=posthoc_rotmnist_mini",
                            "model.group=p4,p4m",
                            "model/aggregator=lambda,transformer",
                            "model.regime=aggregator_only",
                            "seed=range(3)",
                        ]
                    }
                }
            }
        ),
        sweep_dir / "multirun.yaml",
    )
    assert run_identity(cfg)["name"] == "model.group=p4m,model/aggregator=lambda,seed=2"
    for tag in (
        "data:rotmnist_mini",
        "model:posthoc",
        "experiment:posthoc_rotmnist_mini",
        "group:p4m",
        "regime:aggregator_only",
        "aggregator:lambda",
    ):
        assert tag in identity["tags"], (tag, identity["tags"])


def test_offline_wandb_run_has_identity_summary_and_rotation_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    cfg = compose_config(FAST + ["logger=wandb", "trainer.max_epochs=1", "seed=5"], tmp_path / "run")
    monkeypatch.setattr(train_script, "finish_wandb", lambda: None)  # read the summary before finishing
    try:
        metrics, objects = train_script.run(cfg)
        summary = dict(wandb.run.summary)
    finally:
        wandb.finish()
    (wandb_logger,) = [lg for lg in objects["trainer"].loggers if type(lg).__name__ == "WandbLogger"]
    init = wandb_logger._wandb_init
    assert init["group"] == "train" and "seed=5" in init["name"]
    assert {"data:rotmnist_mini", "model:vit"} <= set(init["tags"])
    assert metrics["train/images_per_s"] > 0 and metrics["test/images_per_s"] > 0
    assert summary["model/params"] == metrics["model/params"]
    assert summary["train/images_per_s"] > 0 and summary["test/images_per_s"] > 0
    assert "test/rotation_robustness" in summary  # the accuracy-vs-angle table
    assert list(Path(tmp_path / "run").rglob("offline-run-*"))  # stays on disk, for `wandb sync`


def test_a_wandb_server_that_cannot_be_reached_costs_nothing_but_a_warning(tmp_path, monkeypatch, caplog):
    """WANDB_MODE=online with no network: the run goes on offline (bounded wait, one warning naming the way)."""
    pytest.importorskip("wandb")
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    real_init, attempts = wandb.init, []

    def unreachable(*args, **kwargs):
        attempts.append(os.environ.get("WANDB_MODE"))
        if os.environ.get("WANDB_MODE") == "online":
            raise wandb.errors.CommError("Network error (ConnectionError), entering retry loop.")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", unreachable)
    cfg = compose_config(FAST + ["logger=wandb", "trainer.max_epochs=1"], tmp_path / "run")
    metrics, _ = train_script.run(cfg)
    assert metrics["status"] == "completed" and attempts == ["online", "offline"]
    assert "W&B could not start online (CommError" in caplog.text and "wandb sync" in caplog.text
    assert os.environ["WANDB_INIT_TIMEOUT"] == "30"
    assert list(Path(tmp_path / "run").rglob("offline-run-*"))
