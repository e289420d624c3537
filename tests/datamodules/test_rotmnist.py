"""RotMNIST (datamodules/rotmnist.py) from its real zip or extracted .amat files: splits, orientation, cache,
download and every corrupt-file error; the 10 % variant."""

from __future__ import annotations

import time
import zipfile

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import datamodules.rotmnist as rotmnist_module
from datamodules import (
    DataFileError,
    RotMNISTDataModule,
)
from datamodules.fixtures import (
    amat_bytes,
    rotated_digits,
    write_rotmnist_zip,
)
from datamodules.formats import md5sum
from tests.support.data_files import CONF_DATA, assert_names, small_rotmnist


# ---- RotMNIST -----------------------------------------------------------------------------------------
def test_rotmnist_splits_orientation_and_uint8(rotmnist_zip):
    directory, arrays = rotmnist_zip
    dm = small_rotmnist(directory)
    dm.prepare_data()
    dm.setup()
    assert dm.describe() == {"train": 20, "val": 10, "test": 12}
    # mnist orientation recovers the MNIST-orientation rotated digits the file was made from.
    np.testing.assert_array_equal(dm.train_set.images[:, 0].numpy(), arrays["train_valid_images"][:20])
    np.testing.assert_array_equal(dm.val_set.images[:, 0].numpy(), arrays["train_valid_images"][-10:])
    np.testing.assert_array_equal(dm.test_set.images[:, 0].numpy(), arrays["test_images"])
    assert dm.val_set.labels.tolist() == arrays["train_valid_labels"][-10:].tolist()
    # the pixel of exactly 1.0 is 255 (the (x*256).astype(uint8) recipe would wrap it to 0).
    assert int(dm.train_set.images[0, 0, 14, 14]) == 255
    image, _ = dm.train_set[0]
    assert float(image[0, 14, 14]) == 1.0

    stored = small_rotmnist(directory, orientation="as_stored")
    stored.setup()
    torch.testing.assert_close(stored.test_set.images, dm.test_set.images.transpose(-1, -2))
    torch.testing.assert_close(stored.train_set.images, dm.train_set.images.transpose(-1, -2))


def test_rotmnist_real_default_sizes(rotmnist_full):
    directory, arrays = rotmnist_full
    dm = RotMNISTDataModule(data_dir=str(directory))
    dm.setup()
    assert dm.describe() == {"train": 10000, "val": 2000, "test": 20}
    np.testing.assert_array_equal(dm.val_set.images[:, 0].numpy(), arrays["train_valid_images"][10000:])
    assert dm.train_set.labels.tolist() == arrays["train_valid_labels"][:10000].tolist()


def test_rotmnist_cache_is_used_and_invalidated(rotmnist_zip, monkeypatch):
    directory, _ = rotmnist_zip
    real_read_amat, calls = rotmnist_module.read_amat, []

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real_read_amat(*args, **kwargs)

    def no_parsing(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(rotmnist_module, "read_amat", counting)
    small_rotmnist(directory).prepare_data()
    assert len(calls) == 2 and (directory / RotMNISTDataModule.cache_name).is_file()

    monkeypatch.setattr(rotmnist_module, "read_amat", no_parsing)
    start = time.perf_counter()
    dm = small_rotmnist(directory)
    dm.prepare_data()
    dm.setup()
    dm.setup()  # idempotent
    assert time.perf_counter() - start < 0.5
    assert dm.describe() == {"train": 20, "val": 10, "test": 12}

    # A changed source file invalidates the cache: the files are parsed again.
    write_rotmnist_zip(directory, 31, 12)
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(directory / RotMNISTDataModule.zip_name))
    monkeypatch.setattr(rotmnist_module, "read_amat", counting)
    calls.clear()
    small_rotmnist(directory).setup()
    assert len(calls) == 2

    # With the source gone, the cache is all there is, and it is used.
    (directory / RotMNISTDataModule.zip_name).unlink()
    monkeypatch.setattr(rotmnist_module, "read_amat", no_parsing)
    dm = small_rotmnist(directory)
    dm.setup()
    assert len(dm.val_set) == 10


def test_rotmnist_missing_files_without_download(tmp_path):
    with pytest.raises(DataFileError) as error:
        small_rotmnist(tmp_path / "empty").prepare_data()
    assert_names(error, RotMNISTDataModule.zip_name, "not found", "download=true", RotMNISTDataModule.url)


def test_rotmnist_download_checksum_mismatch(tmp_path, monkeypatch):
    served = tmp_path / "served.zip"
    served.write_bytes(b"PK not really a zip")
    monkeypatch.setattr(RotMNISTDataModule, "url", served.as_uri())
    directory = tmp_path / "rotmnist"
    with pytest.raises(DataFileError) as error:
        small_rotmnist(directory, download=True).prepare_data()
    assert_names(
        error, str(directory / RotMNISTDataModule.zip_name), RotMNISTDataModule.md5, md5sum(served), "checksum mismatch"
    )


def test_rotmnist_download_from_mirror(rotmnist_zip, tmp_path, monkeypatch):
    directory, arrays = rotmnist_zip
    monkeypatch.setattr(RotMNISTDataModule, "url", (directory / RotMNISTDataModule.zip_name).as_uri())
    dm = small_rotmnist(tmp_path / "downloaded", download=True)
    dm.prepare_data()
    dm.setup()
    np.testing.assert_array_equal(dm.test_set.images[:, 0].numpy(), arrays["test_images"])


def test_rotmnist_present_zip_checksum_mismatch(rotmnist_zip, monkeypatch):
    directory, _ = rotmnist_zip
    monkeypatch.setattr(RotMNISTDataModule, "md5", "f" * 32)
    with pytest.raises(DataFileError) as error:
        small_rotmnist(directory).setup()
    assert_names(error, RotMNISTDataModule.zip_name, "f" * 32, "checksum mismatch", "Delete it")


def test_rotmnist_bad_zip(tmp_path, monkeypatch):
    directory = tmp_path / "rotmnist"
    directory.mkdir()
    (directory / RotMNISTDataModule.zip_name).write_bytes(b"this is not a zip archive")
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(directory / RotMNISTDataModule.zip_name))
    with pytest.raises(DataFileError) as error:
        small_rotmnist(directory).setup()
    assert_names(error, RotMNISTDataModule.zip_name, "not a valid zip archive")


def test_rotmnist_missing_zip_member(tmp_path, monkeypatch):
    directory = tmp_path / "rotmnist"
    write_rotmnist_zip(directory, 30, 12, members=(RotMNISTDataModule.train_valid_name,))
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(directory / RotMNISTDataModule.zip_name))
    with pytest.raises(DataFileError) as error:
        small_rotmnist(directory).setup()
    assert_names(error, RotMNISTDataModule.zip_name, RotMNISTDataModule.test_name, "has no member")


def test_rotmnist_truncated_member_names_zip_and_member(tmp_path, monkeypatch):
    directory = tmp_path / "rotmnist"
    directory.mkdir()
    images, labels = rotated_digits(0, 30)
    text = amat_bytes(images, labels)
    with zipfile.ZipFile(directory / RotMNISTDataModule.zip_name, "w") as archive:
        archive.writestr(RotMNISTDataModule.train_valid_name, text[: len(text) - 500])
        archive.writestr(RotMNISTDataModule.test_name, text)
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(directory / RotMNISTDataModule.zip_name))
    with pytest.raises(DataFileError) as error:
        small_rotmnist(directory).setup()
    assert_names(error, f"{RotMNISTDataModule.zip_name}:{RotMNISTDataModule.train_valid_name}", "truncated")


def test_rotmnist_too_few_rows(rotmnist_zip):
    directory, _ = rotmnist_zip
    with pytest.raises(DataFileError) as error:
        RotMNISTDataModule(data_dir=str(directory)).setup()
    assert_names(error, RotMNISTDataModule.zip_name, "30 rows")


# ---- RotMNIST 10 % (conf/data/rotmnist_10pct.yaml: the RotMNIST module with train_fraction 0.1) ----------
def test_rotmnist_10pct_is_stratified_and_seeded(rotmnist_full):
    directory, arrays = rotmnist_full
    assert OmegaConf.load(CONF_DATA / "rotmnist_10pct.yaml").train_fraction == 0.1
    first = RotMNISTDataModule(data_dir=str(directory), split_seed=0, train_fraction=0.1)
    again = RotMNISTDataModule(data_dir=str(directory), split_seed=0, train_fraction=0.1)
    other = RotMNISTDataModule(data_dir=str(directory), split_seed=1, train_fraction=0.1)
    for dm in (first, again, other):
        dm.setup()
    train_labels = torch.from_numpy(arrays["train_valid_labels"][:10000])
    expected = {c: round(int((train_labels == c).sum()) * 0.1) for c in range(10)}
    assert {c: int((first.train_set.labels == c).sum()) for c in range(10)} == expected
    assert abs(len(first.train_set) - 1000) <= 5
    assert torch.equal(first.train_set.images, again.train_set.images)
    assert not torch.equal(first.train_set.images, other.train_set.images)
    assert len(first.val_set) == 2000 and len(first.test_set) == 20
    assert torch.equal(first.val_set.images, other.val_set.images)
