"""RotMNIST-mini (datamodules/rotmnist_mini.py): the embedded real MNIST test digits, rotated and split."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import time

import numpy as np
import pytest
import torch

from datamodules import (
    DataFileError,
    RotMNISTMiniDataModule,
)
from datamodules.fixtures import (
    mnist_digits,
    write_mnist_idx,
)
from datamodules.formats import quantize_uint8, read_idx
from datamodules.rotmnist_mini import ASSET_DIR, IMAGES_MD5, LABELS_MD5
from gevit.rotations import rotate
from tests.support.data_files import assert_names


# ---- RotMNIST-mini ------------------------------------------------------------------------------------
def test_mini_sizes_determinism_and_rotation():
    dm = RotMNISTMiniDataModule()
    start = time.perf_counter()
    dm.setup()
    assert time.perf_counter() - start < 5.0
    assert dm.describe() == {"train": 6000, "val": 1000, "test": 3000}
    again = RotMNISTMiniDataModule()
    again.setup()
    assert torch.equal(dm.train_set.images, again.train_set.images)
    assert torch.equal(dm.test_set.labels, again.test_set.labels)

    upright, rotated, labels = dm.generate()
    assert upright.shape == rotated.shape == (10000, 1, 28, 28) and rotated.dtype == torch.uint8
    assert (upright != rotated).flatten(1).any(1).float().mean() > 0.99
    # image i is digit i turned by the i-th uniform angle in [0, 360) drawn from generation_seed.
    angles = torch.rand(10000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 360.0
    assert float(angles.min()) < 5.0 and float(angles.max()) > 355.0
    for i in (0, 1, 2, 9999):
        expected = quantize_uint8(rotate(upright[i : i + 1].float() / 255.0, float(angles[i])).numpy())
        np.testing.assert_array_equal(rotated[i : i + 1].numpy(), expected)

    other_generation = RotMNISTMiniDataModule(generation_seed=1)
    assert not torch.equal(other_generation.generate()[1], rotated)
    other_split = RotMNISTMiniDataModule(split_seed=1)
    other_split.setup()
    assert not torch.equal(other_split.train_set.labels, dm.train_set.labels)


def test_mini_upright_train_variant():
    rotated_dm = RotMNISTMiniDataModule(train_size=100, val_size=50, test_size=50)
    upright_dm = RotMNISTMiniDataModule(train_size=100, val_size=50, test_size=50, variant="upright_train")
    rotated_dm.setup()
    upright_dm.setup()
    upright, _, labels = upright_dm.generate()
    assert torch.equal(upright_dm.test_set.images, rotated_dm.test_set.images)
    assert torch.equal(upright_dm.train_set.labels, rotated_dm.train_set.labels)
    assert not torch.equal(upright_dm.train_set.images, rotated_dm.train_set.images)
    # the upright train images are genuine MNIST digits
    flat = upright.flatten(1)
    for image in upright_dm.train_set.images[:10]:
        assert (flat == image.flatten()).all(1).any()


def test_mini_rejects_oversized_splits():
    with pytest.raises(ValueError, match="at most 10000"):
        RotMNISTMiniDataModule(train_size=8000, val_size=1000, test_size=3000)


def test_mini_embedded_checksums_verified(tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    shutil.copytree(ASSET_DIR, assets)
    images_gz = assets / "t10k-images-idx3-ubyte.gz"
    data = bytearray(gzip.decompress(images_gz.read_bytes()))
    data[5000] ^= 0xFF
    images_gz.write_bytes(gzip.compress(bytes(data)))
    monkeypatch.setattr("datamodules.rotmnist_mini.ASSET_DIR", assets)
    with pytest.raises(DataFileError) as error:
        RotMNISTMiniDataModule().setup()
    assert_names(error, str(images_gz), IMAGES_MD5, "checksum mismatch")


def test_mini_embedded_files_are_the_official_digits():
    for name, expected in (("t10k-images-idx3-ubyte.gz", IMAGES_MD5), ("t10k-labels-idx1-ubyte.gz", LABELS_MD5)):
        assert hashlib.md5(gzip.decompress((ASSET_DIR / name).read_bytes())).hexdigest() == expected
    assert (ASSET_DIR / "LICENSE.md").is_file()
    _, labels = mnist_digits()
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_mini_data_dir_override(tmp_path):
    empty = RotMNISTMiniDataModule(data_dir=str(tmp_path / "nothing_here"))
    assert empty.source_files()[0].parent == ASSET_DIR
    images, labels = mnist_digits()
    own = tmp_path / "own"
    write_mnist_idx(own, "t10k", images, labels, gz=False)
    dm = RotMNISTMiniDataModule(data_dir=str(own))
    assert dm.source_files()[0] == own / "t10k-images-idx3-ubyte"
    dm.setup()
    reference = RotMNISTMiniDataModule()
    reference.setup()
    assert torch.equal(dm.test_set.images, reference.test_set.images)


def test_real_mnist_equals_embedded_copy(shared_data):
    mnist = shared_data / "mnist"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        if not (mnist / name).is_file():
            pytest.skip(f"{mnist / name} is absent")
        np.testing.assert_array_equal(read_idx(mnist / name), read_idx(ASSET_DIR / name))
