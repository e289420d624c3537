"""Upright MNIST for training, tested on RotMNIST (the MNIST -> RotMNIST experiment) or on MNIST."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from datamodules.base import BaseImageDataModule, TensorImageDataset, seeded_split
from datamodules.errors import DataFileError
from datamodules.formats import find_file, read_mnist_pair
from datamodules.rotmnist import ORIENTATIONS, RotMNISTDataModule

log = logging.getLogger(__name__)

TEST_SETS = ("rotmnist", "mnist")
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTDataModule(BaseImageDataModule):
    """MNIST's 60,000 upright training digits, split into train/val; test on RotMNIST or MNIST.

    Files: the original IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` (and for
    ``test_set="mnist"`` ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each optionally ``.gz``,
    looked up in ``data_dir`` and in ``data_dir/MNIST/raw`` (torchvision's layout). When missing and
    ``download=True``, ``torchvision.datasets.MNIST(data_dir, download=True)`` fetches them (md5-checked)
    into ``data_dir/MNIST/raw``; nothing is downloaded when they are present.

    Splits: the 60,000 training digits are divided by ``split_seed`` into ``60,000 - val_size`` for
    training and ``val_size`` (10,000) for validation. ``test_set="rotmnist"`` (default) tests on the
    50,000 RotMNIST test digits from ``rotmnist_dir`` (loaded, downloaded and cached exactly as by
    :class:`~datamodules.rotmnist.RotMNISTDataModule`, with the same ``orientation`` option: keep
    ``"mnist"`` so that train and test digits differ only by rotation); ``test_set="mnist"`` tests on the
    upright 10,000-digit MNIST test split.

    Images are ``(1, 28, 28)`` floats in [0, 1], not normalised.
    """

    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self,
        data_dir: str = "data/mnist",
        *,
        download: bool = False,
        val_size: int = 10000,
        test_set: str = "rotmnist",
        rotmnist_dir: str = "data/rotmnist",
        orientation: str = "mnist",
        **common,  # BaseImageDataModule's: batch sizes, workers, split_seed, augmentation, shape and stats
    ):
        super().__init__(data_dir=data_dir, **common)
        if test_set not in TEST_SETS:
            raise ValueError(f"test_set must be one of {TEST_SETS}, got {test_set!r}")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.download = download
        self.val_size = val_size
        self.test_set_name = test_set
        self.rotmnist_dir = rotmnist_dir
        self.orientation = orientation

    def _rotmnist(self) -> RotMNISTDataModule:
        return RotMNISTDataModule(data_dir=self.rotmnist_dir, download=self.download, orientation=self.orientation)

    def _needed_splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.test_set_name == "mnist" else ("train",)

    def _find(self, split: str) -> Optional[tuple[Path, Path]]:
        directories = [Path(self.data_dir), Path(self.data_dir) / "MNIST" / "raw"]
        found = [find_file(directories, [name, name + ".gz"]) for name in MNIST_FILES[split]]
        return (found[0], found[1]) if all(found) else None

    def prepare_data(self) -> None:
        """Download the missing MNIST files (only when allowed) and prepare the RotMNIST test set if used."""
        missing = [split for split in self._needed_splits() if self._find(split) is None]
        if missing:
            self._download_or_fail(missing)
        if self.test_set_name == "rotmnist":
            self._rotmnist().prepare_data()

    def _missing_files(self, split: str) -> list[str]:
        directories = [Path(self.data_dir), Path(self.data_dir) / "MNIST" / "raw"]
        return [name for name in MNIST_FILES[split] if find_file(directories, [name, name + ".gz"]) is None]

    def _download_or_fail(self, missing: list[str]) -> None:
        names = [name for split in missing for name in self._missing_files(split)] or [
            name for split in missing for name in MNIST_FILES[split]
        ]
        where = Path(self.data_dir) / names[0]
        how = (
            f"Run with data.download=true, or put {', '.join(names)} (optionally .gz) into {self.data_dir} "
            f"or {Path(self.data_dir) / 'MNIST' / 'raw'}"
        )
        if not self.download:
            raise DataFileError(
                where, f"not found (looked for {', '.join(names)} in {self.data_dir} and its MNIST/raw folder)", how
            )
        from torchvision.datasets import MNIST

        log.info("downloading MNIST into %s", Path(self.data_dir) / "MNIST" / "raw")
        try:
            MNIST(self.data_dir, train=True, download=True)
        except (RuntimeError, OSError) as err:  # torchvision wraps URLError per mirror in a RuntimeError
            raise DataFileError(where, f"could not be downloaded by torchvision ({err})", how) from err
        if any(self._find(split) is None for split in missing):
            raise DataFileError(where, "is still missing after the torchvision download", how)

    def setup(self, stage: Optional[str] = None) -> None:
        """Build train/val/test (all three, whatever ``stage``); a second call does nothing."""
        if self.train_set is not None:
            return
        fix = (
            "Delete it and run again with data.download=true, or replace it with the original MNIST file "
            "(e.g. from torchvision.datasets.MNIST)"
        )
        paths = self._find("train")
        if paths is None:
            self._download_or_fail(["train"])
            paths = self._find("train")
        images, labels = read_mnist_pair(*paths, fix=fix)
        if self.val_size >= len(labels):
            raise ValueError(f"val_size={self.val_size} leaves no training images out of {len(labels)}")
        images_t = torch.from_numpy(images).unsqueeze(1)
        labels_t = torch.from_numpy(labels)
        train_idx, val_idx = seeded_split(len(labels), [len(labels) - self.val_size, self.val_size], self.split_seed)
        self.train_set = TensorImageDataset(images_t[train_idx], labels_t[train_idx], self.train_transform)
        self.val_set = TensorImageDataset(images_t[val_idx], labels_t[val_idx])

        if self.test_set_name == "rotmnist":
            test_images, test_labels = self._rotmnist().test_arrays()
        else:
            paths = self._find("test")
            if paths is None:
                self._download_or_fail(["test"])
                paths = self._find("test")
            images, labels = read_mnist_pair(*paths, fix=fix)
            test_images, test_labels = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
        self.test_set = TensorImageDataset(test_images, test_labels)

    @classmethod
    def write_fixture(cls, directory: str | Path) -> dict:
        """40 training and 16 test digits as gzipped IDX files, and a RotMNIST fixture for the rotated test
        set in ``directory/rotmnist``; see :meth:`BaseImageDataModule.write_fixture`."""
        from datamodules.fixtures import mnist_digits, write_mnist_idx

        directory = Path(directory)
        images, labels = mnist_digits()
        write_mnist_idx(directory, "train", images[:40], labels[:40])
        write_mnist_idx(directory, "t10k", images[40:56], labels[40:56])
        rotmnist = RotMNISTDataModule.write_fixture(directory / "rotmnist")
        return {"data_dir": str(directory), "val_size": 10, "rotmnist_dir": rotmnist["data_dir"]}
