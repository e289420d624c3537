"""MNIST -> RotMNIST (datamodules/mnist.py): IDX files in torchvision's layout, splits, the rotated test set."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from datamodules import (
    DataFileError,
    MNISTDataModule,
)
from datamodules.fixtures import (
    mnist_digits,
)
from tests.support.data_files import assert_names


# ---- MNIST --------------------------------------------------------------------------------------------
def test_mnist_split_and_seed(mnist_dir):
    def build(seed):
        dm = MNISTDataModule(data_dir=str(mnist_dir), val_size=10, test_set="mnist", split_seed=seed)
        dm.prepare_data()
        dm.setup()
        return dm

    first, again, other = build(0), build(0), build(1)
    assert first.describe() == {"train": 50, "val": 10, "test": 20}
    assert torch.equal(first.val_set.images, again.val_set.images)
    assert not torch.equal(first.val_set.images, other.val_set.images)
    images, _ = mnist_digits()
    np.testing.assert_array_equal(first.test_set.images[:, 0].numpy(), images[60:80])
    everything = torch.cat([first.train_set.images, first.val_set.images]).flatten(1)
    assert len(torch.unique(everything, dim=0)) == len(torch.unique(torch.from_numpy(images[:60]).flatten(1), dim=0))


def test_mnist_tests_on_rotmnist(mnist_dir, rotmnist_zip):
    rot_dir, arrays = rotmnist_zip
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_size=10, rotmnist_dir=str(rot_dir))
    dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 12
    np.testing.assert_array_equal(dm.test_set.images[:, 0].numpy(), arrays["test_images"])
    stored = MNISTDataModule(data_dir=str(mnist_dir), val_size=10, rotmnist_dir=str(rot_dir), orientation="as_stored")
    stored.setup()
    torch.testing.assert_close(stored.test_set.images, dm.test_set.images.transpose(-1, -2))


def test_mnist_missing_files_without_download(tmp_path):
    with pytest.raises(DataFileError) as error:
        MNISTDataModule(data_dir=str(tmp_path), test_set="mnist").prepare_data()
    assert_names(error, "train-images-idx3-ubyte", "not found", "download=true")


def test_mnist_missing_labels_file_is_named(mnist_dir):
    labels = next(p for p in mnist_dir.rglob("train-labels-idx1-ubyte*"))
    labels.unlink()
    with pytest.raises(DataFileError) as error:
        MNISTDataModule(data_dir=str(mnist_dir), download=False).prepare_data()
    assert "train-labels-idx1-ubyte" in str(error.value) and "train-images" not in str(error.value).split(":")[0]


def test_mnist_truncated_idx_names_file(mnist_dir):
    path = mnist_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-784]))
    with pytest.raises(DataFileError) as error:
        MNISTDataModule(data_dir=str(mnist_dir), val_size=10, test_set="mnist").setup()
    assert_names(error, str(path), "is truncated")
