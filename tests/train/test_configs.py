"""Every config group option composes and instantiates; every data set and experiment file trains end to end.

The conf folder is the only list: models and data sets are the yamls of ``conf/model`` and ``conf/data`` (files
starting with ``_`` are shared parts, not options), and each data module writes its own tiny real-format
fixture (``write_fixture``), so a new data module plus its yaml is tested here with no edit to this file.
"""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

import train as train_script
from tests.support.compose import CONF_DIR, TINY_VIT, compose_config, tiny_model_overrides


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.fixture(scope="module")
def data_fixtures(tmp_path_factory):
    """``data target -> data.* overrides`` reading a tiny real-format copy that the data module wrote itself."""
    root = tmp_path_factory.mktemp("data")
    written: dict[str, list[str]] = {}

    def overrides(target: str) -> list[str]:
        if target not in written:
            options = get_class(target).write_fixture(root / target.rsplit(".", 1)[-1])
            written[target] = [f"data.{key}={value}" for key, value in options.items()]
        return written[target] + ["data.batch_size=4", "data.eval_batch_size=8"]

    return overrides


def test_config_groups_exist():
    for group in ("data", "model", "trainer", "logger", "callbacks", "experiment", "paths", "hydra", "debug"):
        assert options(group), group
    assert OmegaConf.load(CONF_DIR / "train.yaml").optimized_metric == "val/acc_best"


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_trains(name, data_fixtures, tmp_path):
    """A fast_dev_run of a tiny ViT (one patch: any image size) on each data set's own fixture."""
    target = compose_config([f"data={name}"], tmp_path / "probe").data._target_  # a yaml may compose another
    cfg = compose_config(
        [f"data={name}", "model=vit", "debug=fdr", "model.net.patch_size=${data.image_size}"]
        + TINY_VIT
        + data_fixtures(target)
        + ["callbacks.rotation_robustness.max_samples=4", "callbacks.rotation_robustness.step_deg=90"],
        tmp_path,
    )
    metrics, objects = train_script.run(cfg)
    dm = objects["datamodule"]
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (
        cfg.data.num_classes,
        cfg.data.in_channels,
        cfg.data.image_size,
    )
    assert metrics["status"] == "completed" and 0.0 <= metrics["test/acc"] <= 1.0
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (dm.in_channels, dm.image_size, dm.image_size)


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_instantiates(name, tmp_path):
    cfg = compose_config([f"model={name}"], tmp_path)
    model = hydra.utils.instantiate(cfg.model)
    x = torch.rand(2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    assert model(x).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("name", options("trainer"))
def test_every_trainer_option_composes(name, tmp_path):
    cfg = compose_config([f"trainer={name}"], tmp_path)
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    # GPU/DDP/MPS options cannot start here; their remaining settings must still build a Trainer.
    overrides = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "num_nodes": 1, "sync_batchnorm": False}
    cfg.trainer.update({k: v for k, v in overrides.items() if k in cfg.trainer})
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize("name", options("logger"))
def test_every_logger_option_instantiates(name, tmp_path):
    cfg = compose_config([f"logger={name}"], tmp_path)
    loggers = train_script.instantiate_collection(cfg.get("logger"), "logger")
    assert len(loggers) == {"none": 0, "csv": 1, "wandb": 2}[name]


@pytest.mark.parametrize("name", options("callbacks"))
def test_every_callbacks_option_instantiates(name, tmp_path):
    cfg = compose_config([f"callbacks={name}"], tmp_path)
    callbacks = train_script.instantiate_collection(cfg.get("callbacks"), "callbacks")
    assert all(isinstance(c, L.Callback) for c in callbacks)


@pytest.mark.parametrize("name", options("debug"))
def test_every_debug_option_composes(name, tmp_path):
    cfg = compose_config([f"debug={name}"], tmp_path)
    assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_runs_fast_dev_run(name, data_fixtures, tmp_path):
    """A fast_dev_run of every experiment file on tiny real-format data: one batch of fit + test."""
    probe = compose_config([f"experiment={name}"], tmp_path)
    cfg = compose_config(
        [f"experiment={name}", "debug=fdr"]
        + tiny_model_overrides(probe)
        + data_fixtures(probe.data._target_)
        + ["callbacks.rotation_robustness.max_samples=4", "callbacks.rotation_robustness.step_deg=90"],
        tmp_path,
    )
    metrics, objects = train_script.run(cfg)
    assert metrics["status"] == "completed"
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert objects["datamodule"].test_loader_calls == 1


@pytest.mark.parametrize("group, an_option", [("data", "rotmnist"), ("model", "gevit")])
def test_unknown_option_in_a_group_is_a_clear_error(tmp_path, group, an_option):
    """An unknown choice names itself and lists the group's options (model=: the one way to pick a network)."""
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=f"{group}/nope") as error:
        compose_config([f"{group}=nope"], tmp_path)
    assert f"Available options in '{group}'" in str(error.value) and an_option in str(error.value)


def test_hydra_outputs_stay_out_of_multirun_folder():
    hydra_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "default.yaml"), resolve=False)
    assert hydra_cfg["sweep"]["dir"].startswith("${paths.log_dir}/")
    assert hydra_cfg["run"]["dir"].startswith("${paths.log_dir}/")
