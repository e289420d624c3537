"""RotMNIST: the rotated-MNIST benchmark of Larochelle et al. (ICML 2007), ``mnist_rotation_new.zip``."""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from datamodules.base import BaseImageDataModule, TensorImageDataset, subsample_indices
from datamodules.errors import DataFileError
from datamodules.formats import (
    ROTMNIST_TEST,
    ROTMNIST_TRAIN_VALID,
    ROTMNIST_ZIP,
    download_url,
    open_zip_member,
    quantize_uint8,
    read_amat,
    verify_md5,
)

log = logging.getLogger(__name__)

ORIENTATIONS = ("mnist", "as_stored")


class RotMNISTDataModule(BaseImageDataModule):
    """The RotMNIST benchmark: 12,000 rotated digits for training and validation, 50,000 for testing.

    Source: ``mnist_rotation_new.zip`` (md5 ``0f9a947ff3d30e95cd685462cbf3b847``) from :attr:`url`, which
    holds ``mnist_all_rotation_normalized_float_train_valid.amat`` (12,000 rows) and
    ``mnist_all_rotation_normalized_float_test.amat`` (50,000 rows); each row is 784 pixel floats in [0, 1]
    and the label. The zip is looked up in ``data_dir`` (downloaded there when ``download=True``); the two
    ``.amat`` files already extracted into ``data_dir`` are accepted instead (they carry no checksum, so
    only their structure is checked). No network access happens when the files are present.

    Splits (the standard protocol): train = the first ``train_size`` (10,000) rows of the train_valid file,
    val = its last ``val_size`` (2,000) rows, test = all 50,000 test rows. ``train_fraction < 1`` keeps a
    class-stratified subset of the train split, chosen by ``split_seed`` (val and test are unchanged).

    Cache: the text files take seconds to parse, so the parsed arrays are stored once in
    ``data_dir/rotmnist_cache_v1.npz`` (uint8, about 49 MB; loads in well under a second) together with the
    name, size and mtime of the source files. A changed source invalidates the cache; when no source
    remains next to it, the cache is used as is. The parse + cache happens in :meth:`prepare_data`
    (or in :meth:`setup` when prepare_data was not called).

    Quantisation: pixels are stored as ``uint8 = clip(rint(x * 255), 0, 255)`` (error <= 1/510). The
    often copied ``(x * 256).round().astype(uint8)`` is *not* used: it wraps the value 1.0 to 256 -> 0,
    turning the brightest stroke pixels black.

    Orientation: the ``.amat`` digits are stored transposed relative to MNIST (row-major vs column-major
    pixel order, i.e. a reflection about the diagonal). ``orientation="mnist"`` (default) transposes them
    back (swaps H and W), so that an upright MNIST digit and its RotMNIST counterpart differ by a pure
    rotation, which is what an MNIST -> RotMNIST experiment needs. ``orientation="as_stored"`` keeps the
    file's orientation, matching code that reads the files without transposing (for exact comparison with
    such results; for a rotation-invariant model trained and tested on RotMNIST both are equivalent up to
    a reflection, which a rotation-only model is *not* invariant to).

    Images are ``(1, 28, 28)`` floats in [0, 1], not normalised (the model uses :attr:`mean`/:attr:`std`).
    """

    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)

    url = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
    md5 = "0f9a947ff3d30e95cd685462cbf3b847"
    zip_name = ROTMNIST_ZIP
    train_valid_name = ROTMNIST_TRAIN_VALID
    test_name = ROTMNIST_TEST
    cache_name = "rotmnist_cache_v1.npz"
    # Row counts of the official files; other counts are accepted (tests use small files) with a warning.
    official_rows = {"train_valid": 12000, "test": 50000}

    def __init__(
        self,
        data_dir: str = "data/rotmnist",
        *,
        download: bool = False,
        orientation: str = "mnist",
        train_fraction: float = 1.0,
        train_size: int = 10000,
        val_size: int = 2000,
        **common,  # BaseImageDataModule's: batch sizes, workers, split_seed, augmentation, shape and stats
    ):
        super().__init__(data_dir=data_dir, **common)
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if train_size < 1 or val_size < 0:
            raise ValueError(f"train_size must be >= 1 and val_size >= 0, got {train_size} and {val_size}")
        self.download = download
        self.orientation = orientation
        self.train_fraction = train_fraction
        self.train_size = train_size
        self.val_size = val_size

    # ---- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Find (or download) the source files and write the parsed cache; no-op when the cache is valid."""
        self.load_arrays()

    def setup(self, stage: Optional[str] = None) -> None:
        """Build train/val/test (all three, whatever ``stage``); a second call does nothing."""
        if self.train_set is not None:
            return
        arrays = self.load_arrays()
        train_valid_images = self._orient(arrays["train_valid_images"])
        train_valid_labels = torch.from_numpy(arrays["train_valid_labels"].astype(np.int64))
        n = len(train_valid_labels)
        if self.train_size + self.val_size > n:
            raise DataFileError(
                self._source_description(),
                f"the train_valid split has {n} rows, fewer than "
                f"train_size + val_size = {self.train_size} + {self.val_size}",
                f"Lower data.train_size/data.val_size; if the file is cut short: {self._fix_hint()}",
            )
        train_images = train_valid_images[: self.train_size]
        train_labels = train_valid_labels[: self.train_size]
        keep = subsample_indices(len(train_labels), self.train_fraction, self.split_seed, labels=train_labels)
        self.train_set = TensorImageDataset(train_images[keep], train_labels[keep], self.train_transform)
        val = slice(n - self.val_size, n)  # always the last val_size rows
        self.val_set = TensorImageDataset(train_valid_images[val], train_valid_labels[val])
        test_images, test_labels = self.test_arrays(arrays)
        self.test_set = TensorImageDataset(test_images, test_labels)

    # ---- arrays ------------------------------------------------------------------------------------
    def test_arrays(self, arrays: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The 50,000 test images uint8 ``(N, 1, 28, 28)`` in the chosen orientation, and int64 labels.

        Used by :class:`~datamodules.mnist.MNISTDataModule` for its MNIST -> RotMNIST test set.
        """
        arrays = self.load_arrays() if arrays is None else arrays
        return self._orient(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.int64))

    def load_arrays(self) -> dict[str, np.ndarray]:
        """The parsed files in the file's orientation: ``{train_valid,test}_{images,labels}`` (uint8).

        Loads the cache when it is valid; otherwise finds or downloads the source, parses it and rewrites
        the cache.
        """
        data_dir = Path(self.data_dir)
        sources = self._find_sources()
        key = self._source_key(sources) if sources else None
        cached = self._read_cache(data_dir / self.cache_name, key)
        if cached is not None:
            return cached
        if not sources:
            sources = self._download_or_fail()
            key = self._source_key(sources)
        arrays = self._parse(sources)
        self._write_cache(data_dir / self.cache_name, arrays, key)
        return arrays

    def _orient(self, images: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
        if self.orientation == "mnist":
            tensor = tensor.transpose(-1, -2).contiguous()
        return tensor

    # ---- source files ------------------------------------------------------------------------------
    def _find_sources(self) -> list[Path]:
        """``[zip]`` if the zip is in data_dir, else ``[train_valid.amat, test.amat]`` if both are, else []."""
        data_dir = Path(self.data_dir)
        if (data_dir / self.zip_name).is_file():
            return [data_dir / self.zip_name]
        amats = [data_dir / self.train_valid_name, data_dir / self.test_name]
        if all(path.is_file() for path in amats):
            return amats
        return []

    def _fix_hint(self) -> str:
        return (
            f"Delete it (and {self.cache_name}) and run again with data.download=true, or download "
            f"{self.url} into {self.data_dir} by hand (md5 {self.md5})"
        )

    def _source_description(self) -> str:
        sources = self._find_sources()
        return str(sources[0]) if len(sources) == 1 else str(Path(self.data_dir) / self.train_valid_name)

    def _download_or_fail(self) -> list[Path]:
        zip_path = Path(self.data_dir) / self.zip_name
        if not self.download:
            raise DataFileError(
                zip_path,
                f"not found (nor the extracted {self.train_valid_name} and {self.test_name} next to it)",
                f"Run with data.download=true, or download {self.url} into {self.data_dir}",
            )
        download_url(
            self.url, zip_path, md5=self.md5, fix=f"Try again, or download {self.url} by hand into {self.data_dir}"
        )
        return [zip_path]

    @staticmethod
    def _source_key(sources: list[Path]) -> str:
        stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in sources]
        return json.dumps({"version": 1, "sources": stats})

    def _parse(self, sources: list[Path]) -> dict[str, np.ndarray]:
        if len(sources) == 1:
            zip_path = sources[0]
            fix = self._fix_hint()
            if self.md5 is not None:
                verify_md5(zip_path, self.md5, fix)
            try:
                archive = zipfile.ZipFile(zip_path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DataFileError(
                    zip_path, f"is not a valid zip archive (truncated or corrupt?): {err}", fix
                ) from err
            with archive:
                parsed = {}
                for split, member in (("train_valid", self.train_valid_name), ("test", self.test_name)):
                    with open_zip_member(archive, member, zip_path, fix) as handle:
                        parsed[split] = read_amat(handle, f"{zip_path}:{member}", fix)
        else:
            fix = (
                f"Replace it with the file extracted from {self.zip_name} ({self.url}), or put the zip "
                f"itself into {self.data_dir}"
            )
            parsed = {split: read_amat(path, str(path), fix) for split, path in zip(("train_valid", "test"), sources)}
        log.info("parsed RotMNIST from %s", ", ".join(str(path) for path in sources))
        arrays = {}
        for split, (images, labels) in parsed.items():
            if len(labels) != self.official_rows[split]:
                log.warning(
                    "RotMNIST %s file has %d rows; the official file has %d",
                    split,
                    len(labels),
                    self.official_rows[split],
                )
            arrays[f"{split}_images"] = quantize_uint8(images)
            arrays[f"{split}_labels"] = labels.astype(np.uint8)
        return arrays

    # ---- cache -------------------------------------------------------------------------------------
    @staticmethod
    def _read_cache(path: Path, key: Optional[str]) -> Optional[dict[str, np.ndarray]]:
        """The cached arrays if ``path`` exists and was built from the source ``key`` (any source if None)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as cache:
                cached_key = str(cache["source_key"])
                if key is not None and cached_key != key:
                    log.info("RotMNIST cache %s was built from other source files; rebuilding it", path)
                    return None
                return {name: cache[name] for name in cache.files if name != "source_key"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            log.warning("ignoring unreadable RotMNIST cache %s (%s); rebuilding it", path, err)
            return None

    @staticmethod
    def _write_cache(path: Path, arrays: dict[str, np.ndarray], key: str) -> None:
        partial = path.with_name(path.name + f".{os.getpid()}.part.npz")
        try:
            np.savez(partial, source_key=np.array(key), **arrays)
            partial.replace(path)
        except OSError as err:  # e.g. a read-only or full data dir: run without the cache
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass
            log.warning(
                "could not write the RotMNIST cache %s (%s); the files will be parsed again next time", path, err
            )

    # ---- test data ---------------------------------------------------------------------------------
    @classmethod
    def write_fixture(cls, directory: str | Path) -> dict:
        """The two extracted ``.amat`` files with 24 train_valid and 16 test rotated digits (the extracted files
        carry no checksum, unlike the zip); see :meth:`BaseImageDataModule.write_fixture`."""
        from datamodules.fixtures import write_rotmnist_amats

        write_rotmnist_amats(Path(directory), n_train_valid=24, n_test=16)
        return {"data_dir": str(directory), "train_size": 16, "val_size": 8}
