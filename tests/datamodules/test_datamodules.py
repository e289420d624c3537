"""What every data module does alike: declared batch shapes, augmentation on train only, the test loader refused
while fitting, the data facts stated once by the class, every data config instantiating."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import OmegaConf

from datamodules import (
    HonestSplitError,
    MNISTDataModule,
    PCamDataModule,
    RotMNISTDataModule,
    RotMNISTMiniDataModule,
)
from datamodules.fixtures import (
    write_pcam,
    write_rotmnist_zip,
)
from datamodules.formats import md5sum
from datamodules.rotmnist_mini import ASSET_DIR
from runkit.config import compose
from runkit.resolvers import DATA_FACTS
from tests.support.data_files import CONF_DATA


# ---- common behaviour ---------------------------------------------------------------------------------
@pytest.fixture
def every_module(tmp_path, monkeypatch, mnist_dir):
    rot_dir = tmp_path / "rotmnist"
    write_rotmnist_zip(rot_dir, 40, 12)
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(rot_dir / RotMNISTDataModule.zip_name))
    write_pcam(tmp_path / "pcam")
    small = dict(batch_size=8, eval_batch_size=8)
    return [
        RotMNISTMiniDataModule(train_size=60, val_size=20, test_size=20, **small),
        RotMNISTDataModule(data_dir=str(rot_dir), train_size=30, val_size=10, **small),
        RotMNISTDataModule(data_dir=str(rot_dir), train_size=30, val_size=10, train_fraction=0.1, **small),
        MNISTDataModule(data_dir=str(mnist_dir), val_size=10, rotmnist_dir=str(rot_dir), **small),
        PCamDataModule(data_dir=str(tmp_path / "pcam"), num_workers=0, **small),
    ]


def test_every_module_yields_declared_batches(every_module):
    for dm in every_module:
        dm.prepare_data()
        dm.setup()
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            images, labels = next(iter(loader))
            assert images.dtype == torch.float32, type(dm).__name__
            assert images.shape[1:] == (dm.in_channels, dm.image_size, dm.image_size), type(dm).__name__
            assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
            assert labels.dtype == torch.int64 and int(labels.max()) < dm.num_classes


@pytest.mark.parametrize("augmentation", ["rotation", "rot90_flip"])
def test_augmentation_only_on_train(augmentation):
    dm = RotMNISTMiniDataModule(train_size=20, val_size=20, test_size=20, augmentation=augmentation)
    dm.setup()
    assert dm.train_set.transform is not None
    assert dm.val_set.transform is None and dm.test_set.transform is None
    image, _ = dm.train_set[0]
    assert image.shape == (1, 28, 28) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_test_loader_refused_while_fitting():
    dm = RotMNISTMiniDataModule(train_size=20, val_size=20, test_size=20)
    dm.setup()
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING))
    with pytest.raises(HonestSplitError):
        dm.test_dataloader()
    dm.trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.TESTING))
    assert len(dm.test_dataloader().dataset) == 20


def test_config_facts_must_match_the_data():
    with pytest.raises(ValueError, match="num_classes"):
        RotMNISTMiniDataModule(num_classes=100)


DATA_OPTIONS = sorted(p.stem for p in CONF_DATA.glob("*.yaml") if not p.stem.startswith("_"))  # _: shared parts


def composed_data(name: str, tmp_path: Path, *overrides: str):
    """``conf/data/<name>.yaml`` as train.py composes it (shared parts included), data under ``tmp_path``."""
    cfg = compose([f"data={name}", f"paths.data_dir={tmp_path}", *overrides], tmp_path / "run")
    return cfg.data


@pytest.mark.parametrize("name", DATA_OPTIONS)
def test_data_configs_instantiate(name, tmp_path):
    data = composed_data(name, tmp_path)
    dm = instantiate(data)
    assert type(dm).__name__ == data._target_.split(".")[-1]
    assert Path(dm.data_dir).parent == tmp_path
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (data.num_classes, data.in_channels, data.image_size)
    assert tuple(dm.mean) == tuple(data.mean) and tuple(dm.std) == tuple(data.std)
    assert (dm.batch_size, dm.eval_batch_size, dm.split_seed) == (data.batch_size, data.eval_batch_size, 0)


def test_data_configs_list_every_constructor_option(tmp_path):
    for name in DATA_OPTIONS:
        data = composed_data(name, tmp_path)
        cls = get_class(data._target_)
        options = set()
        # each class's own options, then (through **common) those of the classes it builds on
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            parameters = inspect.signature(klass.__init__).parameters.values()
            options |= {p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
            if not any(p.kind is p.VAR_KEYWORD for p in parameters):
                break
        assert options == set(data.keys()) - {"_target_"}, name


def test_data_facts_are_stated_once_by_the_class(tmp_path):
    """No data yaml states num_classes/in_channels/image_size/mean/std: they come from the class
    (conf/data/_facts.yaml), and a fact that is an option of the module is overridden as usual."""
    for name in DATA_OPTIONS:
        assert not set(DATA_FACTS) & set(OmegaConf.load(CONF_DATA / f"{name}.yaml")), name
    pcam = composed_data("pcam", tmp_path)
    assert (pcam.num_classes, pcam.in_channels, pcam.image_size) == (2, 3, 96)
    assert list(pcam.std) == list(PCamDataModule.std)
    cfg = compose(["data=lensing", "data.image_size=65", "data.num_classes=3"], tmp_path / "run")
    assert (cfg.data.image_size, cfg.data.num_classes, cfg.data.in_channels) == (65, 3, 1)
    assert (cfg.model.image_size, cfg.model.net.num_classes, list(cfg.model.input_std)) == (65, 3, [1.0])
    with pytest.raises(Exception, match="num_classes=100 in the config, but the data set has num_classes=10"):
        instantiate(composed_data("rotmnist_mini", tmp_path, "data.num_classes=100"))


def test_mini_config_falls_back_to_embedded_assets(tmp_path):
    data = composed_data("rotmnist_mini", tmp_path)
    data.train_size, data.val_size, data.test_size = 10, 10, 10
    dm = instantiate(data)
    dm.setup()
    assert dm.source_files()[0].parent == ASSET_DIR and len(dm.test_set) == 10
