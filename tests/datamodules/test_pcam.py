"""PCam (datamodules/pcam.py): its HDF5 files, splits, worker processes, bad and missing files, download."""

from __future__ import annotations

import gzip
import os

import h5py
import numpy as np
import pytest
import torch

from datamodules import (
    DataFileError,
    PCamDataModule,
)
from datamodules.fixtures import (
    write_pcam,
)
from datamodules.formats import pcam_file_name
from tests.support.data_files import assert_names


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
