"""The readers of the real on-disk formats (datamodules/formats.py): .amat text, IDX, downloads with checksums;
every malformed file is one error naming the file and the row."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from datamodules import (
    DataFileError,
)
from datamodules.fixtures import (
    amat_bytes,
    idx_bytes,
    mnist_digits,
    rotated_digits,
    write_mnist_idx,
)
from datamodules.formats import download_url, quantize_uint8, read_amat, read_idx
from tests.support.data_files import assert_names


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
