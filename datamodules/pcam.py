"""PatchCamelyon (PCam): 96x96 histopathology patches, tumour / no tumour, read lazily from HDF5."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseImageDataModule, subsample_indices
from datamodules.errors import DataFileError
from datamodules.formats import PCAM_FILE_SPLITS, download_url, gunzip_file, pcam_file_name

log = logging.getLogger(__name__)

OFFICIAL_LENGTHS = {"train": 262144, "val": 32768, "test": 32768}
IMAGE_SHAPE = (96, 96, 3)


class H5PatchDataset(Dataset):
    """Images ``x[indices]`` of a PCam ``*_x.h5`` file, read one at a time, with in-memory labels.

    The HDF5 file is opened lazily in :meth:`__getitem__` by the process that reads (each DataLoader
    worker opens its own handle; a handle inherited through ``fork`` is never used because the owner pid
    is checked, and pickling drops it), so the dataset works with any number of workers.
    """

    def __init__(self, x_path: Path, indices: np.ndarray, labels: torch.Tensor, transform=None):
        self.x_path = str(x_path)
        self.indices = indices
        self.labels = labels
        self.transform = transform
        self._file: Optional[h5py.File] = None
        self._owner_pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.indices)

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._owner_pid != os.getpid():
            self._file = h5py.File(self.x_path, "r")
            self._owner_pid = os.getpid()
        return self._file["x"]

    def __getitem__(self, index: int):
        row = int(self.indices[index])
        try:
            patch = self._images()[row]
        except OSError as err:
            raise DataFileError(
                self.x_path,
                f"patch {row} cannot be read (truncated or corrupt?): {err}",
                "Delete it and download it again",
            ) from err
        image = torch.from_numpy(patch).permute(2, 0, 1).float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_owner_pid"] = None
        return state


class PCamDataModule(BaseImageDataModule):
    """PatchCamelyon (Veeling et al. 2018): 327,680 RGB patches of 96x96, label 1 = tumour in the centre.

    Files in ``data_dir``: ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``; ``x`` holds uint8
    ``(N, 96, 96, 3)`` under key ``x``, ``y`` holds ``(N, 1, 1, 1)`` (or ``(N,)``) integer labels under key
    ``y``; N = 262,144 / 32,768 / 32,768 (train / valid / test; other sizes are accepted with a warning).
    ``setup`` checks every file (present, valid HDF5, right key, dtype and shape, x/y lengths agree,
    first and last patch readable, labels 0/1) and raises a DataFileError naming the file otherwise.
    Labels are loaded into memory; images are read lazily, one patch per item (see
    :class:`H5PatchDataset`), so the 7 GB training file is never loaded.

    ``train_fraction``/``val_fraction``/``test_fraction`` keep a seeded (``split_seed``), class-agnostic
    subset of each split, e.g. to train on part of PCam; report test results with ``test_fraction=1``.

    Download (``download=True``, only for missing files): ``<name>.h5.gz`` from Zenodo record 2546921
    (:attr:`url_template`), gunzipped in place. Checksums: the md5s of the two training archives agree
    across every source (the PCam README, torchvision, independent downloads) and are verified
    (:attr:`gz_md5`). For the valid/test archives the PCam README and torchvision list the same two
    pairs of md5s with valid and test swapped, so they cannot be attributed reliably and are not checked;
    those files are verified by the gzip CRC and by the HDF5 structure checks above only.

    Images are ``(3, 96, 96)`` floats in [0, 1], not normalised (``mean``/``std`` are PCam's channel
    statistics, for the model).
    """

    num_classes = 2
    in_channels = 3
    image_size = 96
    mean = (0.701, 0.538, 0.692)
    std = (0.235, 0.277, 0.213)

    url_template = "https://zenodo.org/records/2546921/files/{name}.gz?download=1"
    gz_md5 = {
        "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
        "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    }

    def __init__(
        self,
        data_dir: str = "data/pcam",
        *,
        download: bool = False,
        train_fraction: float = 1.0,
        val_fraction: float = 1.0,
        test_fraction: float = 1.0,
        **common,  # BaseImageDataModule's: batch sizes, workers, split_seed, augmentation, shape and stats
    ):
        common.setdefault("num_workers", 4)
        super().__init__(data_dir=data_dir, **common)
        self.fractions = {"train": train_fraction, "val": val_fraction, "test": test_fraction}
        for split, fraction in self.fractions.items():
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"{split}_fraction must be in (0, 1], got {fraction}")
        self.download = download

    def _path(self, split: str, kind: str) -> Path:
        return Path(self.data_dir) / pcam_file_name(split, kind)

    def _fix(self, path: Path) -> str:
        return (
            f"Delete it and run again with data.download=true, or download "
            f"{self.url_template.format(name=path.name)}, gunzip it and put it in {self.data_dir}"
        )

    def prepare_data(self) -> None:
        """Download and gunzip the missing files when ``download=True``; else fail naming them."""
        missing = [
            self._path(split, kind)
            for split in PCAM_FILE_SPLITS
            for kind in ("x", "y")
            if not self._path(split, kind).is_file()
        ]
        if not missing:
            return
        if not self.download:
            names = ", ".join(path.name for path in missing)
            raise DataFileError(
                missing[0],
                f"not found ({len(missing)} PCam file(s) missing in {self.data_dir}: {names})",
                f"Run with data.download=true, or download them from Zenodo record 2546921 "
                f"({self.url_template.format(name=missing[0].name)}), gunzip them and put "
                f"them in {self.data_dir}",
            )
        for path in missing:
            archive = path.with_name(path.name + ".gz")
            url = self.url_template.format(name=path.name)
            download_url(url, archive, md5=self.gz_md5.get(archive.name), fix=self._fix(path))
            gunzip_file(archive, path, fix=self._fix(path))
            archive.unlink()

    def setup(self, stage: Optional[str] = None) -> None:
        """Check the files of all three splits (whatever ``stage``) and build the lazy datasets; idempotent."""
        if self.train_set is not None:
            return
        datasets = {}
        for split in PCAM_FILE_SPLITS:
            x_path, labels = self._check_split(split)
            indices = subsample_indices(len(labels), self.fractions[split], self.split_seed).numpy()
            transform = self.train_transform if split == "train" else None
            datasets[split] = H5PatchDataset(x_path, indices, torch.from_numpy(labels[indices]), transform)
        self.train_set, self.val_set, self.test_set = datasets["train"], datasets["val"], datasets["test"]

    def _check_split(self, split: str) -> tuple[Path, np.ndarray]:
        """Validate the split's x and y files; return the x path and all labels int64 ``(N,)``."""
        x_path, y_path = self._path(split, "x"), self._path(split, "y")
        with self._open(x_path) as handle:
            images = self._dataset(handle, "x", x_path)
            if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
                raise DataFileError(
                    x_path,
                    f"dataset 'x' has shape {images.shape} and dtype {images.dtype}; expected (N, 96, 96, 3) uint8",
                    self._fix(x_path),
                )
            n = images.shape[0]
            if n == 0:
                raise DataFileError(x_path, "holds no patches (dataset 'x' is empty)", self._fix(x_path))
            self._check_patch_storage(x_path, images)
        with self._open(y_path) as handle:
            targets = self._dataset(handle, "y", y_path)
            if targets.shape not in ((targets.shape[0], 1, 1, 1), (targets.shape[0],)) or not np.issubdtype(
                targets.dtype, np.integer
            ):
                raise DataFileError(
                    y_path,
                    f"dataset 'y' has shape {targets.shape} and dtype {targets.dtype}; "
                    f"expected integer labels of shape (N, 1, 1, 1) or (N,)",
                    self._fix(y_path),
                )
            try:
                labels = targets[()].reshape(-1).astype(np.int64)
            except OSError as err:
                raise DataFileError(
                    y_path, f"its labels cannot be read (truncated or corrupt?): {err}", self._fix(y_path)
                ) from err
        if len(labels) != n:
            raise DataFileError(
                y_path, f"has {len(labels)} labels but {x_path.name} has {n} patches", self._fix(y_path)
            )
        if labels.size and not np.isin(labels, (0, 1)).all():
            bad = np.setdiff1d(np.unique(labels), [0, 1])[:5].tolist()
            raise DataFileError(y_path, f"has labels {bad}; PCam labels are 0 or 1", self._fix(y_path))
        if n != OFFICIAL_LENGTHS[split]:
            log.warning("PCam %s split has %d patches; the official files have %d", split, n, OFFICIAL_LENGTHS[split])
        return x_path, labels

    # Files up to this size are read whole by the check; larger ones (the real 7 GB training file) are checked
    # by their storage layout and a sample of patches, and a damaged patch is named when training reaches it.
    FULL_CHECK_BYTES = 256 * 2**20
    SAMPLED_PATCHES = 64

    def _check_patch_storage(self, x_path: Path, images: h5py.Dataset) -> None:
        """Cheap up-front checks of the patches: every chunk (or the contiguous block) lies inside the file (a
        truncated file is caught here), and every patch of a small file, or an even sample of a large one,
        decodes."""
        size, n = x_path.stat().st_size, images.shape[0]
        dsid = images.id
        try:
            if images.chunks is None:
                offset = dsid.get_offset()
                if offset is None or offset + dsid.get_storage_size() > size:
                    raise OSError("its data lies past the end of the file")
            else:
                for i in range(dsid.get_num_chunks()):
                    info = dsid.get_chunk_info(i)
                    if info.byte_offset + info.size > size:
                        raise OSError(f"chunk {i} (patch {info.chunk_offset[0]}) lies past the end of the file")
            rows = (
                range(n) if size <= self.FULL_CHECK_BYTES else np.linspace(0, n - 1, self.SAMPLED_PATCHES).astype(int)
            )
            for row in rows:
                _ = images[int(row)]
        except OSError as err:
            raise DataFileError(
                x_path, f"its patches cannot be read (truncated or corrupt?): {err}", self._fix(x_path)
            ) from err

    def _open(self, path: Path) -> h5py.File:
        if not path.is_file():
            raise DataFileError(
                path,
                "not found",
                f"Run with data.download=true (or call prepare_data), or "
                f"download {self.url_template.format(name=path.name)}, "
                f"gunzip it and put it in {self.data_dir}",
            )
        try:
            return h5py.File(path, "r")
        except OSError as err:
            raise DataFileError(path, f"not a valid HDF5 file (truncated or corrupt?): {err}", self._fix(path)) from err

    def _dataset(self, handle: h5py.File, key: str, path: Path) -> h5py.Dataset:
        if key not in handle or not isinstance(handle[key], h5py.Dataset):
            raise DataFileError(path, f"has no dataset {key!r} (it holds: {sorted(handle.keys())})", self._fix(path))
        return handle[key]

    @classmethod
    def write_fixture(cls, directory: str | Path) -> dict:
        """The six HDF5 files with 8 / 4 / 4 random patches; see :meth:`BaseImageDataModule.write_fixture`."""
        from datamodules.fixtures import write_pcam

        write_pcam(Path(directory), {"train": 8, "val": 4, "test": 4})
        return {"data_dir": str(directory), "num_workers": 0}
