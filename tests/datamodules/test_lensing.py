"""The lensing data module on tiny real-format fixtures: class folders of .npy arrays and PNG/JPEG files."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import DataFileError, LensingDataModule
from datamodules.fixtures import write_lensing_folders
from datamodules.lensing import fit_to_size, read_lensing_image, stratified_split
from tests.support.compose import compose_config


@pytest.fixture(scope="module")
def lensing_dir(tmp_path_factory) -> Path:
    return write_lensing_folders(tmp_path_factory.mktemp("lensing"))


def module(data_dir, **kwargs) -> LensingDataModule:
    kwargs = {"num_workers": 0, "batch_size": 4, **kwargs}
    return LensingDataModule(data_dir=str(data_dir), **kwargs)


def test_classes_splits_and_images(lensing_dir):
    dm = module(lensing_dir)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.classes == ["no_sub", "sub"]
    assert dm.describe() == {"train": 16, "val": 2, "test": 2}
    for split in (dm.train_set, dm.val_set, dm.test_set):  # stratified: every split holds both classes equally
        assert torch.bincount(split.labels, minlength=2).tolist() == [len(split) // 2] * 2
    paths = [p for split in (dm.train_set, dm.val_set, dm.test_set) for p in split.paths]
    assert len(set(paths)) == 20
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 129, 129) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert labels.dtype == torch.int64
    image, label = dm.train_set[0]
    assert ("sub" if label == 1 else "no_sub") == dm.train_set.paths[0].parent.name


def test_split_is_seeded_and_independent_of_run_seed(lensing_dir):
    def split_paths(split_seed):
        torch.manual_seed(123)  # the run seed must not matter
        dm = module(lensing_dir, split_seed=split_seed)
        dm.setup()
        return [list(map(str, s.paths)) for s in (dm.train_set, dm.val_set, dm.test_set)]

    assert split_paths(0) == split_paths(0)
    assert split_paths(0) != split_paths(1)


def test_stratified_split_fractions():
    labels = torch.tensor([0] * 50 + [1] * 30)
    train, val, test = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(val), len(test)) == (64, 8, 8)
    assert torch.bincount(labels[val]).tolist() == [5, 3]
    assert len(torch.cat([train, val, test]).unique()) == 80
    assert sum(map(len, stratified_split(labels, (0.5, 0.1, 0.1), seed=0))) == 56  # the rest stays unused


def test_image_size_and_crop(lensing_dir):
    dm = module(lensing_dir, image_size=33, crop_size=20)
    dm.setup()
    assert dm.val_set[0][0].shape == (1, 33, 33)
    image = torch.arange(36.0).reshape(1, 6, 6) / 35
    assert torch.equal(fit_to_size(image, 4, crop_size=4), image[:, 1:5, 1:5])  # centre crop, no resize needed


def test_rotation_augmentation_applies_to_train_only(lensing_dir):
    dm = module(lensing_dir, augmentation="rotation")
    dm.setup()
    assert dm.train_set.transform is not None and dm.val_set.transform is None
    assert dm.train_set[0][0].shape == (1, 129, 129)


def test_num_classes_must_match_the_folders(lensing_dir):
    with pytest.raises(
        DataFileError,
        match=r"2 class folder\(s\) \(no_sub, sub\) but num_classes=3.*"
        r"data.num_classes=2",
    ):
        module(lensing_dir, num_classes=3).setup()


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataFileError, match=r"missing.*lenses.tgz.*data.data_dir"):
        module(tmp_path / "nope").prepare_data()
    with pytest.raises(DataFileError, match="holds no class folders"):
        module(tmp_path).prepare_data()


def test_nested_layout_gets_a_hint(tmp_path):
    write_lensing_folders(tmp_path / "lenses", per_class=2)
    with pytest.raises(DataFileError, match=r"did you mean data.data_dir=.*lenses"):
        module(tmp_path).setup()


def test_empty_class_folder_and_too_few_files(tmp_path):
    write_lensing_folders(tmp_path / "a", per_class=2)
    (tmp_path / "a" / "zzz").mkdir()
    with pytest.raises(DataFileError, match=r"zzz: holds no image files"):
        module(tmp_path / "a", num_classes=3).setup()
    write_lensing_folders(tmp_path / "b", per_class=3)
    with pytest.raises(DataFileError, match=r"too few files \(6\) for a non-empty test split"):
        module(tmp_path / "b").setup()


def test_corrupt_files_name_the_file(tmp_path):
    root = write_lensing_folders(tmp_path / "data", per_class=10)
    bad_png = root / "sub" / "sub_001.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataFileError, match=r"sub_001.png: is not a readable image"):
        read_lensing_image(bad_png)
    bad_npy = root / "sub" / "sub_000.npy"
    bad_npy.write_bytes(bad_npy.read_bytes()[:100])
    with pytest.raises(DataFileError, match=r"sub_000.npy: is not a readable .npy array"):
        read_lensing_image(bad_npy)
    dm = module(root, split_seed=0)
    dm.setup()
    everything = dm.train_set.paths + dm.val_set.paths + dm.test_set.paths
    assert bad_png in everything  # listed; the error comes when the file is read
    split = next(s for s in (dm.train_set, dm.val_set, dm.test_set) if bad_png in s.paths)
    with pytest.raises(DataFileError, match="sub_001.png"):
        split[split.paths.index(bad_png)]


@pytest.mark.parametrize(
    "array, expected_max",
    [
        (np.full((1, 5, 7), 0.5), 0.5),
        (np.full((5, 7, 1), 0.25, dtype=np.float32), 0.25),
        (np.full((5, 7), 255, dtype=np.uint8), 1.0),
        (np.full((5, 7), 65535, dtype=np.uint16), 1.0),
        (np.stack([np.ones((5, 7)), np.zeros((5, 7)), np.zeros((5, 7))]), 0.299),  # RGB channels first -> luma
    ],
)
def test_npy_variants(tmp_path, array, expected_max):
    path = tmp_path / "x.npy"
    np.save(path, array)
    image = read_lensing_image(path)
    assert image.shape == (1, 5, 7) and image.dtype == torch.float32
    assert float(image.max()) == pytest.approx(expected_max, abs=1e-6)


def test_npy_range_and_shape_errors(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.linspace(-2.0, 3.0, 20).reshape(4, 5))
    with pytest.raises(DataFileError, match=r"outside \[0, 1\].*data.npy_scaling=minmax"):
        read_lensing_image(path)
    scaled = read_lensing_image(path, npy_scaling="minmax")
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    np.save(path, np.zeros((2, 4, 5, 4)))
    with pytest.raises(DataFileError, match=r"shape \(2, 4, 5, 4\)"):
        read_lensing_image(path)
    np.save(path, np.array([[np.nan, 0.5]]))
    with pytest.raises(DataFileError, match="non-finite"):
        read_lensing_image(path)


def test_sixteen_bit_png(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.full((4, 6), 65535, dtype=np.uint16)).save(path)
    image = read_lensing_image(path)
    assert image.shape == (1, 4, 6) and float(image.min()) == pytest.approx(1.0)


def test_config_instantiates(lensing_dir, tmp_path):
    cfg = compose_config(["data=lensing", f"data.data_dir={lensing_dir}", "data.num_workers=0"], tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    assert (dm.num_classes, dm.in_channels, dm.image_size, dm.mean, dm.std) == (2, 1, 129, (0.0,), (1.0,))
    dm.setup()
    assert dm.describe() == {"train": 16, "val": 2, "test": 2}
    with pytest.raises(Exception, match="in_channels=3 in the config, but the data set has in_channels=1"):
        hydra.utils.instantiate(cfg.data, in_channels=3)
