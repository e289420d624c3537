"""Real-format data files written tiny for the data module tests."""

from __future__ import annotations

import pytest

from datamodules import (
    RotMNISTDataModule,
)
from datamodules.fixtures import (
    mnist_digits,
    write_mnist_idx,
    write_rotmnist_amats,
    write_rotmnist_zip,
)
from datamodules.formats import md5sum


# ---- RotMNIST ---------------------------------------------------------------------------------------
@pytest.fixture
def rotmnist_zip(tmp_path, monkeypatch):
    """A real-format mnist_rotation_new.zip with 30 train_valid and 12 test rows; md5 pinned to it."""
    directory = tmp_path / "rotmnist"
    arrays = write_rotmnist_zip(directory, 30, 12)
    monkeypatch.setattr(RotMNISTDataModule, "md5", md5sum(directory / RotMNISTDataModule.zip_name))
    return directory, arrays


@pytest.fixture(scope="module")
def rotmnist_full(tmp_path_factory):
    """Extracted .amat files with the real train_valid size (12,000 rows) and 20 test rows, parsed once."""
    directory = tmp_path_factory.mktemp("rotmnist_full")
    arrays = write_rotmnist_amats(directory, 12000, 20)
    RotMNISTDataModule(data_dir=str(directory)).prepare_data()  # parse + cache once for the whole module
    return directory, arrays


@pytest.fixture
def mnist_dir(tmp_path):
    """torchvision layout (MNIST/raw) with 60 'train' digits and 20 't10k' digits."""
    images, labels = mnist_digits()
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_mnist_idx(raw, "train", images[:60], labels[:60])
    write_mnist_idx(raw, "t10k", images[60:80], labels[60:80], gz=False)
    return tmp_path / "mnist"
