"""Writers of tiny data files in the exact on-disk formats of the real data sets.

Each data module's ``write_fixture`` classmethod uses them to write its own test data (so a new data set
brings its own fixture and the config tests need no edit); the data module tests use them directly to
write corrupt or unusual variants. Nothing here touches the network: the digits are the real MNIST test
digits embedded in ``datamodules/assets/mnist``, rotated and written in the RotMNIST ``.amat``/zip layout,
the MNIST IDX layout; PCam's HDF5 layout holds random patches; the lensing class folders hold ring images
as ``.npy``, PNG and JPEG files.
"""

from __future__ import annotations

import gzip
import zipfile
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import torch

from datamodules.formats import (
    EMBEDDED_MNIST_DIR,
    ROTMNIST_TEST,
    ROTMNIST_TRAIN_VALID,
    ROTMNIST_ZIP,
    pcam_file_name,
    quantize_uint8,
    read_mnist_pair,
)
from gevit.rotations import rotate

AMAT_FORMAT = "%.10e"
_AMAT_TOKENS = np.array([AMAT_FORMAT % (level / 255.0) for level in range(256)], dtype=object)
_AMAT_LABELS = [AMAT_FORMAT % label for label in range(10)]


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 embedded MNIST test digits: uint8 ``(10000, 28, 28)`` (MNIST orientation), int64 labels."""
    return read_mnist_pair(
        EMBEDDED_MNIST_DIR / "t10k-images-idx3-ubyte.gz", EMBEDDED_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    )


def rotated_digits(start: int, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits ``start .. start+count`` (cycling over the 10,000), each rotated by a random angle, as uint8.

    Returns MNIST-orientation uint8 ``(count, 28, 28)`` images and int64 labels, i.e. what a RotMNIST
    loader with ``orientation="mnist"`` must give back for a file written by :func:`amat_bytes`.
    """
    images, labels = mnist_digits()
    index = (np.arange(count) + start) % len(labels)
    angles = torch.rand(count, generator=torch.Generator().manual_seed(seed)) * 360.0
    upright = torch.from_numpy(images[index]).float().div(255.0).unsqueeze(1)
    rotated = quantize_uint8(rotate(upright, angles).squeeze(1).numpy())
    return rotated, labels[index]


def amat_bytes(images_mnist_orientation: np.ndarray, labels: np.ndarray) -> bytes:
    """``.amat`` text of uint8 MNIST-orientation digits, stored transposed as in the ICML 2007 files."""
    stored = np.ascontiguousarray(images_mnist_orientation.transpose(0, 2, 1)).reshape(len(labels), -1)
    lines = [" ".join(_AMAT_TOKENS[row]) + " " + _AMAT_LABELS[label] + "\n" for row, label in zip(stored, labels)]
    return "".join(lines).encode()


def write_rotmnist_zip(
    directory: Path,
    n_train_valid: int,
    n_test: int,
    members: tuple[str, ...] = (ROTMNIST_TRAIN_VALID, ROTMNIST_TEST),
) -> dict[str, np.ndarray]:
    """Write ``mnist_rotation_new.zip`` with the two real-named ``.amat`` members into ``directory``.

    Pixel (0, 14, 14) of the first train_valid digit is exactly 1.0 (255) to catch uint8 wrap-around.
    Returns the MNIST-orientation uint8 images and labels written, keyed ``{train_valid,test}_{images,labels}``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _rotmnist_arrays(n_train_valid, n_test)
    contents = {
        ROTMNIST_TRAIN_VALID: amat_bytes(arrays["train_valid_images"], arrays["train_valid_labels"]),
        ROTMNIST_TEST: amat_bytes(arrays["test_images"], arrays["test_labels"]),
    }
    with zipfile.ZipFile(directory / ROTMNIST_ZIP, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in members:
            archive.writestr(name, contents[name])
    return arrays


def write_rotmnist_amats(directory: Path, n_train_valid: int, n_test: int) -> dict[str, np.ndarray]:
    """Like :func:`write_rotmnist_zip`, but the two ``.amat`` files extracted into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _rotmnist_arrays(n_train_valid, n_test)
    (directory / ROTMNIST_TRAIN_VALID).write_bytes(
        amat_bytes(arrays["train_valid_images"], arrays["train_valid_labels"])
    )
    (directory / ROTMNIST_TEST).write_bytes(amat_bytes(arrays["test_images"], arrays["test_labels"]))
    return arrays


def _rotmnist_arrays(n_train_valid: int, n_test: int) -> dict[str, np.ndarray]:
    train_valid_images, train_valid_labels = rotated_digits(0, n_train_valid, seed=1)
    test_images, test_labels = rotated_digits(n_train_valid, n_test, seed=2)
    train_valid_images[0, 14, 14] = 255
    return {
        "train_valid_images": train_valid_images,
        "train_valid_labels": train_valid_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file of a uint8 array ``(N, 28, 28)`` (magic 2051) or ``(N,)`` (magic 2049)."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_idx(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    """Write ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {f"{prefix}-images-idx3-ubyte": images, f"{prefix}-labels-idx1-ubyte": labels.astype(np.uint8)}
    for name, array in files.items():
        data = idx_bytes(array)
        if gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        else:
            (directory / name).write_bytes(data)


def write_pcam(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the six PCam HDF5 files (``x`` uint8 ``(N, 96, 96, 3)``, ``y`` uint8 ``(N, 1, 1, 1)``).

    Returns the labels written per split (train/val/test).
    """
    sizes = sizes or {"train": 12, "val": 6, "test": 6}
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = {}
    for split, n in sizes.items():
        x = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        with h5py.File(directory / pcam_file_name(split, "x"), "w") as handle:
            handle.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
        with h5py.File(directory / pcam_file_name(split, "y"), "w") as handle:
            handle.create_dataset("y", data=y)
        labels[split] = y.reshape(-1).astype(np.int64)
    return labels


def lensing_image(seed: int, size: int) -> np.ndarray:
    """A lensing-like float image in [0, 1]: a bright ring (Einstein ring) plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    ring = np.exp(-((np.hypot(x, y) - size / 4) ** 2) / 4.0)
    return np.clip(0.8 * ring + 0.1 * rng.random((size, size)), 0.0, 1.0)


def write_lensing_folders(root: Path, per_class: int = 10, classes=("no_sub", "sub")) -> Path:
    """Class folders under ``root`` in the real layout, half ``.npy`` (float64, 2-D) and half 8-bit grey PNG.

    Every third file of the last class is an RGB JPEG, to exercise the grey conversion. Returns ``root``.
    """
    from PIL import Image

    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = lensing_image(100 * c + i, 24 + 2 * (i % 3))
            if i % 2 == 0:
                np.save(folder / f"{name}_{i:03d}.npy", image)
            elif c == len(classes) - 1 and i % 3 == 0:
                rgb = np.repeat((image * 255).astype(np.uint8)[..., None], 3, axis=-1)
                Image.fromarray(rgb, mode="RGB").save(folder / f"{name}_{i:03d}.jpg")
            else:
                Image.fromarray((image * 255).astype(np.uint8), mode="L").save(folder / f"{name}_{i:03d}.png")
    return root
