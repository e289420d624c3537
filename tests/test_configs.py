"""Every config group option composes and instantiates; every experiment file runs end to end."""
from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

import train as train_script
from datamodules import RotMNISTDataModule
from datamodules.formats import md5sum
from tests.data_fixtures import mnist_digits, write_mnist_idx, write_pcam, write_rotmnist_zip
from tests.helpers import CONF_DIR, compose_config, tiny_model_overrides
from tests.test_lensing import write_lensing_folders


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tiny real-format copies of every data set: RotMNIST zip, MNIST IDX, PCam HDF5."""
    root = tmp_path_factory.mktemp("data")
    write_rotmnist_zip(root / "rotmnist", n_train_valid=24, n_test=16)
    images, labels = mnist_digits()
    write_mnist_idx(root / "mnist", "train", images[:40], labels[:40])
    write_mnist_idx(root / "mnist", "t10k", images[40:56], labels[40:56])
    write_pcam(root / "pcam", {"train": 8, "val": 4, "test": 4})
    write_lensing_folders(root / "lensing", per_class=10)
    return root


@pytest.fixture(autouse=True)
def accept_fixture_zip(data_root, monkeypatch):
    """The tiny zip is real-format but not the real file: accept its checksum."""
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(data_root / "rotmnist" / RotMNISTDataModule.zip_name))


# Overrides that shrink each data set to its tiny fixture.
def small_data(name: str, root: Path) -> list[str]:
    return {
        "rotmnist": [f"data.data_dir={root}/rotmnist", "data.train_size=16", "data.val_size=8"],
        "rotmnist_10pct": [f"data.data_dir={root}/rotmnist", "data.train_size=16", "data.val_size=8"],
        "mnist": [f"data.data_dir={root}/mnist", "data.val_size=10", f"data.rotmnist_dir={root}/rotmnist"],
        "pcam": [f"data.data_dir={root}/pcam", "data.num_workers=0"],
        "rotmnist_mini": ["data.train_size=32", "data.val_size=16", "data.test_size=16"],
        "lensing": [f"data.data_dir={root}/lensing", "data.num_workers=0"],
    }[name] + ["data.batch_size=4", "data.eval_batch_size=8"]


def test_config_groups_exist():
    for group in ("data", "model", "trainer", "logger", "callbacks", "experiment", "paths", "hydra", "debug"):
        assert options(group), group
    assert OmegaConf.load(CONF_DIR / "train.yaml").optimized_metric == "val/acc_best"


@pytest.mark.parametrize("name", options("data"))
def test_every_data_option_instantiates(name, data_root, tmp_path):
    cfg = compose_config([f"data={name}"] + small_data(name, data_root), tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (cfg.data.num_classes, cfg.data.in_channels,
                                                              cfg.data.image_size)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
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
def test_every_experiment_runs_fast_dev_run(name, data_root, tmp_path):
    """A fast_dev_run of every experiment file on tiny real-format data: one batch of fit + test."""
    probe = compose_config([f"experiment={name}"], tmp_path)
    data_name = Path(probe.data._target_.split(".")[-1]).name
    data_name = {"RotMNISTDataModule": "rotmnist", "RotMNIST10pctDataModule": "rotmnist_10pct",
                 "MNISTDataModule": "mnist", "PCamDataModule": "pcam",
                 "RotMNISTMiniDataModule": "rotmnist_mini", "LensingDataModule": "lensing"}.get(data_name, data_name)
    cfg = compose_config([f"experiment={name}", "debug=fdr"] + tiny_model_overrides(probe)
                         + small_data(data_name, data_root) + ["callbacks.rotation_robustness.max_samples=4",
                                                             "callbacks.rotation_robustness.step_deg=90"],
                         tmp_path)
    metrics, objects = train_script.run(cfg)
    assert metrics["status"] == "completed"
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert objects["datamodule"].test_loader_calls == 1


def test_unknown_option_in_a_group_is_a_clear_error(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="data/nope"):
        compose_config(["data=nope"], tmp_path)


def test_hydra_outputs_stay_out_of_multirun_folder():
    hydra_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "default.yaml"), resolve=False)
    assert hydra_cfg["sweep"]["dir"].startswith("${paths.log_dir}/")
    assert hydra_cfg["run"]["dir"].startswith("${paths.log_dir}/")
