"""Data modules: real on-disk formats (written tiny in tmp_path), splits, seeds, caches and every corrupt-file error."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import shutil
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import OmegaConf

import datamodules.rotmnist as rotmnist_module
from datamodules import (
    DataFileError,
    HonestSplitError,
    MNISTDataModule,
    PCamDataModule,
    RotMNISTDataModule,
    RotMNISTMiniDataModule,
)
from datamodules.fixtures import (
    amat_bytes,
    idx_bytes,
    mnist_digits,
    rotated_digits,
    write_mnist_idx,
    write_pcam,
    write_rotmnist_amats,
    write_rotmnist_zip,
)
from datamodules.formats import download_url, md5sum, pcam_file_name, quantize_uint8, read_amat, read_idx
from datamodules.rotmnist_mini import ASSET_DIR, IMAGES_MD5, LABELS_MD5
from gevit.rotations import rotate
from runkit.config import compose
from runkit.resolvers import DATA_FACTS

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DATA = REPO_ROOT / "conf" / "data"


# ---- fixtures ---------------------------------------------------------------------------------------
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


def small_rotmnist(directory, **kwargs) -> RotMNISTDataModule:
    return RotMNISTDataModule(data_dir=str(directory), train_size=20, val_size=10, **kwargs)


def assert_names(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- .amat reader -----------------------------------------------------------------------------------
def test_read_amat_returns_file_orientation_and_labels(tmp_path):
    images, labels = rotated_digits(0, 5)
    path = tmp_path / "digits.amat"
    path.write_bytes(amat_bytes(images, labels))
    parsed, parsed_labels = read_amat(path)
    assert parsed.dtype == np.float32 and parsed.shape == (5, 28, 28)
    assert parsed_labels.dtype == np.int64 and parsed_labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(quantize_uint8(parsed), images.transpose(0, 2, 1))


def _amat_rows(count: int = 3) -> list[str]:
    images, labels = rotated_digits(0, count)
    return amat_bytes(images, labels).decode().splitlines(keepends=True)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("truncated", "is truncated: its last row (3) has only 100 of 785 values"),
        ("wrong_columns", "row 2 has 784 columns, expected 785"),
        ("non_numeric", "row 2 contains non-numeric text 'abc'"),
        ("empty", "is empty"),
        ("label_not_integer", "row 1 has label 3.5"),
        ("label_out_of_range", "row 1 has label 12.0"),
        ("pixel_out_of_range", "row 3 has pixel value 1.5"),
    ],
)
def test_read_amat_errors_name_file_and_row(tmp_path, case, fragment):
    rows = _amat_rows()
    if case == "truncated":
        rows[2] = " ".join(rows[2].split()[:100])
    elif case == "wrong_columns":
        rows[1] = " ".join(rows[1].split()[:784]) + "\n"
    elif case == "non_numeric":
        tokens = rows[1].split()
        tokens[10] = "abc"
        rows[1] = " ".join(tokens) + "\n"
    elif case == "empty":
        rows = ["\n", "  \n"]
    elif case in ("label_not_integer", "label_out_of_range"):
        rows[0] = " ".join(rows[0].split()[:784] + ["3.5" if case == "label_not_integer" else "12"]) + "\n"
    elif case == "pixel_out_of_range":
        rows[2] = "1.5 " + " ".join(rows[2].split()[1:]) + "\n"
    path = tmp_path / f"{case}.amat"
    path.write_text("".join(rows))
    with pytest.raises(DataFileError) as error:
        read_amat(path)
    assert_names(error, str(path), fragment)


def test_read_amat_tolerates_rounding_outside_unit_interval(tmp_path):
    rows = _amat_rows(1)
    tokens = rows[0].split()
    tokens[0], tokens[1] = "-0.00000001", "1.00000001"
    path = tmp_path / "eps.amat"
    path.write_text(" ".join(tokens) + "\n")
    images, _ = read_amat(path)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_quantize_maps_one_to_255_not_zero():
    values = np.array([0.0, 0.5, 1.0, 1.0 + 1e-7], dtype=np.float32)
    assert quantize_uint8(values).tolist() == [0, 128, 255, 255]


# ---- IDX reader ---------------------------------------------------------------------------------------
def test_read_idx_roundtrip_gz_and_plain(tmp_path):
    images, labels = mnist_digits()
    write_mnist_idx(tmp_path / "gz", "t10k", images[:7], labels[:7], gz=True)
    write_mnist_idx(tmp_path / "plain", "t10k", images[:7], labels[:7], gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "gz" / "t10k-images-idx3-ubyte.gz"), images[:7])
    np.testing.assert_array_equal(read_idx(tmp_path / "plain" / "t10k-labels-idx1-ubyte"), labels[:7])


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("truncated", "is truncated"),
        ("bad_magic", "has magic number 2052"),
        ("bad_gzip", "is not a valid gzip stream"),
        ("trailing", "bytes after"),
    ],
)
def test_read_idx_errors(tmp_path, case, fragment):
    data = idx_bytes(mnist_digits()[0][:3])
    path = tmp_path / "t10k-images-idx3-ubyte"
    if case == "truncated":
        path.write_bytes(data[:-100])
    elif case == "bad_magic":
        path.write_bytes((2052).to_bytes(4, "big") + data[4:])
    elif case == "bad_gzip":
        path = path.with_suffix(".gz")
        path.write_bytes(gzip.compress(data)[:-200])
    elif case == "trailing":
        path.write_bytes(data + b"\0\0")
    with pytest.raises(DataFileError) as error:
        read_idx(path)
    assert_names(error, str(path), fragment)


# ---- downloads ----------------------------------------------------------------------------------------
def test_download_checksum_mismatch_names_file_and_md5s(tmp_path):
    source = tmp_path / "served.bin"
    source.write_bytes(b"not the archive")
    destination = tmp_path / "out" / "archive.zip"
    with pytest.raises(DataFileError) as error:
        download_url(source.as_uri(), destination, md5="0" * 32)
    assert_names(error, str(destination), "0" * 32, hashlib.md5(b"not the archive").hexdigest())
    assert not destination.exists() and not destination.with_name("archive.zip.part").exists()


def test_download_unreachable_url_is_a_data_file_error(tmp_path):
    with pytest.raises(DataFileError) as error:
        download_url((tmp_path / "nowhere.zip").as_uri(), tmp_path / "archive.zip")
    assert_names(error, "archive.zip", "could not be downloaded")


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


# ---- MNIST --------------------------------------------------------------------------------------------
@pytest.fixture
def mnist_dir(tmp_path):
    """torchvision layout (MNIST/raw) with 60 'train' digits and 20 't10k' digits."""
    images, labels = mnist_digits()
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_mnist_idx(raw, "train", images[:60], labels[:60])
    write_mnist_idx(raw, "t10k", images[60:80], labels[60:80], gz=False)
    return tmp_path / "mnist"


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


# ---- PCam ---------------------------------------------------------------------------------------------
def test_pcam_splits_and_fraction_seed(tmp_path):
    labels = write_pcam(tmp_path, {"train": 40, "val": 10, "test": 10})
    dm = PCamDataModule(data_dir=str(tmp_path), num_workers=0)
    dm.prepare_data()
    dm.setup()
    dm.setup()
    assert dm.describe() == {"train": 40, "val": 10, "test": 10}
    assert dm.test_set.labels.tolist() == labels["test"].tolist()
    with h5py.File(tmp_path / pcam_file_name("val", "x")) as handle:
        expected = torch.from_numpy(handle["x"][3]).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(dm.val_set[3][0], expected)

    def subset(seed):
        part = PCamDataModule(data_dir=str(tmp_path), train_fraction=0.25, split_seed=seed)
        part.setup()
        return part.train_set.indices.tolist()

    assert len(subset(0)) == 10 and subset(0) == subset(0) and subset(0) != subset(1)


def test_pcam_loader_with_worker_processes(tmp_path):
    write_pcam(tmp_path)
    dm = PCamDataModule(data_dir=str(tmp_path), num_workers=1, batch_size=4)
    dm.setup()
    _ = dm.val_set[0]  # the parent opens a handle before the workers fork; workers must open their own
    batches = list(dm.train_dataloader())
    assert sum(len(labels) for _, labels in batches) == 12


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "not found"),
        ("not_h5", "not a valid HDF5 file"),
        ("bad_key", "has no dataset 'x'"),
        ("bad_shape", "expected (N, 96, 96, 3) uint8"),
        ("bad_label_shape", "expected integer labels"),
        ("length_mismatch", "has 5 labels but"),
        ("bad_labels", "PCam labels are 0 or 1"),
        ("truncated", "HDF5"),
        ("empty", "holds no patches"),
        ("corrupt_chunk", "its patches cannot be read"),
    ],
)
def test_pcam_bad_files(tmp_path, case, fragment):
    write_pcam(tmp_path)
    x_path, y_path = tmp_path / pcam_file_name("val", "x"), tmp_path / pcam_file_name("val", "y")
    culprit = y_path if case in ("bad_label_shape", "length_mismatch", "bad_labels") else x_path
    if case == "missing":
        x_path.unlink()
    elif case == "not_h5":
        x_path.write_bytes(b"this is not an HDF5 file")
    elif case == "bad_key":
        with h5py.File(x_path, "w") as handle:
            handle.create_dataset("images", data=np.zeros((6, 96, 96, 3), np.uint8))
    elif case == "bad_shape":
        with h5py.File(x_path, "w") as handle:
            handle.create_dataset("x", data=np.zeros((6, 3, 96, 96), np.uint8))
    elif case == "bad_label_shape":
        with h5py.File(y_path, "w") as handle:
            handle.create_dataset("y", data=np.zeros((6, 2), np.uint8))
    elif case in ("length_mismatch", "bad_labels"):
        with h5py.File(y_path, "w") as handle:
            y = np.zeros((5 if case == "length_mismatch" else 6, 1, 1, 1), np.uint8)
            y[0] = 0 if case == "length_mismatch" else 7
            handle.create_dataset("y", data=y)
    elif case == "truncated":
        with open(x_path, "r+b") as handle:
            handle.truncate(os.path.getsize(x_path) // 2)
    elif case == "empty":
        with h5py.File(x_path, "w") as handle:
            handle.create_dataset("x", shape=(0, 96, 96, 3), dtype=np.uint8)
    elif case == "corrupt_chunk":  # a compressed chunk in the middle of the file is damaged
        with h5py.File(x_path, "w") as handle:
            handle.create_dataset(
                "x", data=np.zeros((6, 96, 96, 3), np.uint8), chunks=(1, 96, 96, 3), compression="gzip"
            )
        with h5py.File(x_path, "r") as handle:
            info = handle["x"].id.get_chunk_info(3)
        with open(x_path, "r+b") as handle:
            handle.seek(info.byte_offset)
            handle.write(b"\xff" * info.size)
    with pytest.raises(DataFileError) as error:
        PCamDataModule(data_dir=str(tmp_path)).setup()
    assert_names(error, str(culprit), fragment)


def test_pcam_missing_without_download_names_files(tmp_path):
    with pytest.raises(DataFileError) as error:
        PCamDataModule(data_dir=str(tmp_path)).prepare_data()
    assert_names(error, pcam_file_name("train", "x"), pcam_file_name("test", "y"), "download=true", "2546921")


def test_pcam_download_gunzips_and_checks_md5(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_pcam(mirror)
    for path in list(mirror.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    monkeypatch.setattr(PCamDataModule, "url_template", mirror.as_uri() + "/{name}.gz")
    with pytest.raises(DataFileError) as error:  # the real md5 of the training archive does not match
        PCamDataModule(data_dir=str(tmp_path / "a"), download=True).prepare_data()
    archive = pcam_file_name("train", "x") + ".gz"
    assert_names(error, archive, PCamDataModule.gz_md5[archive], "checksum mismatch")

    monkeypatch.setattr(PCamDataModule, "gz_md5", {})
    dm = PCamDataModule(data_dir=str(tmp_path / "b"), download=True)
    dm.prepare_data()
    dm.setup()
    assert dm.describe() == {"train": 12, "val": 6, "test": 6}
    assert not list((tmp_path / "b").glob("*.gz"))


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
