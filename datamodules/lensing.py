"""Strong gravitational lensing images with / without dark-matter substructure (the EqCvT data set).

On disk: one folder per class under ``data_dir`` (the EqCvT data, ``lenses.tgz``, has ``no_sub/`` and ``sub/``,
5,000 PyAutoLens simulations each), each holding single-image files: ``.npy`` arrays or image files
(``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.base import BaseImageDataModule
from datamodules.errors import DataFileError

NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NPY_SCALINGS = ("none", "minmax")
DOWNLOAD_HINT = (
    "download lenses.tgz (Google Drive id 16Y1taQoTeUTP5rGpB0tuPZ_S30acvnqr, linked from "
    "github.com/sachdevkartik/GSoC-2022), extract it and point data.data_dir at the folder that "
    "holds the class folders (no_sub/, sub/)"
)
# ITU-R 601 luma, the weights of PIL's convert("L"), for arrays stored with 3 colour channels.
LUMA = np.array([0.299, 0.587, 0.114])


def read_lensing_image(path: Path, npy_scaling: str = "none") -> torch.Tensor:
    """One image file as a float32 tensor ``(1, H, W)`` in [0, 1].

    ``.npy``: a 2-D array ``(H, W)``, or ``(1, H, W)``/``(H, W, 1)``, or 3 colour channels ``(3, H, W)``/
    ``(H, W, 3)`` (converted to grey with PIL's weights). Unsigned integers are divided by their maximum
    (255 for uint8, 65535 for uint16); floats must already lie in [0, 1] unless ``npy_scaling="minmax"``,
    which maps each image's own minimum/maximum to 0/1. Image files are decoded with PIL and converted to
    8-bit grey (``convert("L")``; 16-bit grey files are divided by 65535).

    Raises:
        DataFileError: unreadable or corrupt file, wrong shape, non-finite values, values outside [0, 1].
    """
    fix = "Replace it with an intact copy from lenses.tgz, or delete it"
    if path.suffix.lower() in NPY_SUFFIXES:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise DataFileError(path, f"is not a readable .npy array (truncated or corrupt?): {err}", fix) from err
        return _npy_to_image(path, array, npy_scaling, fix)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L"):
                array = np.asarray(image, dtype=np.float32) / 65535.0
            else:
                array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataFileError(path, f"is not a readable image (truncated or corrupt?): {err}", fix) from err
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)


def _npy_to_image(path: Path, array: np.ndarray, npy_scaling: str, fix: str) -> torch.Tensor:
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # channels first -> channels last
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))) or min(array.shape) < 1:
        raise DataFileError(
            path,
            f"holds an array of shape {array.shape}; expected one single-channel image "
            f"(H, W), (1, H, W) or (H, W, 1) (or 3 colour channels)",
            fix,
        )
    if np.issubdtype(array.dtype, np.unsignedinteger):
        image = array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.signedinteger):
        image = array.astype(np.float64)
        if not np.isfinite(image).all():
            raise DataFileError(path, "contains non-finite values (nan or inf)", fix)
        if npy_scaling == "minmax":
            low, high = image.min(), image.max()
            image = (image - low) / (high - low) if high > low else np.zeros_like(image)
        elif image.min() < 0.0 or image.max() > 1.0:
            raise DataFileError(
                path,
                f"has values in [{image.min():.4g}, {image.max():.4g}], outside [0, 1]",
                "Rescale the files to [0, 1], or set data.npy_scaling=minmax to map each "
                "image's minimum/maximum to 0/1",
            )
    else:
        raise DataFileError(path, f"has dtype {array.dtype}; expected an integer or float image", fix)
    if image.ndim == 3:
        image = image[..., 0] if image.shape[-1] == 1 else image @ LUMA
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).unsqueeze(0)


def fit_to_size(image: torch.Tensor, image_size: int, crop_size: Optional[int] = None) -> torch.Tensor:
    """``(C, H, W)`` -> ``(C, image_size, image_size)``: optional centre crop to ``crop_size``, then resize.

    The crop keeps the central ``crop_size`` x ``crop_size`` window (images smaller than that are left
    alone); a non-square or differently sized result is resized with bilinear interpolation
    (``align_corners=False``, antialiased when shrinking), which keeps the image centre fixed.
    """
    _, h, w = image.shape
    if crop_size is not None and h >= crop_size and w >= crop_size:
        top, left = (h - crop_size) // 2, (w - crop_size) // 2
        image = image[:, top : top + crop_size, left : left + crop_size]
    if tuple(image.shape[1:]) != (image_size, image_size):
        image = (
            F.interpolate(
                image.unsqueeze(0), size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
            )
            .squeeze(0)
            .clamp_(0.0, 1.0)
        )
    return image


class LensingFileDataset(Dataset):
    """Images read lazily from ``paths`` (one file per item), fitted to ``image_size``; int64 ``labels``."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: torch.Tensor,
        image_size: int,
        crop_size: Optional[int],
        npy_scaling: str,
        transform=None,
    ):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        self.paths, self.labels = list(paths), labels.long()
        self.image_size, self.crop_size, self.npy_scaling = image_size, crop_size, npy_scaling
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = fit_to_size(read_lensing_image(self.paths[index], self.npy_scaling), self.image_size, self.crop_size)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Seeded, class-stratified split of ``range(len(labels))`` into ``len(fractions)`` parts.

    Each class's members are permuted (one ``torch.Generator`` seeded with ``seed``, classes in label order)
    and cut at the rounded cumulative fractions, so every part holds about its fraction of every class;
    fractions summing to less than 1 leave the rest unused. Indices come back sorted.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        bounds = [0] + [math.floor(len(members) * sum(fractions[: i + 1]) + 0.5) for i in range(len(fractions))]
        for part, start, stop in zip(parts, bounds[:-1], bounds[1:]):
            part.append(members[start:stop])
    return [torch.cat(part).sort().values for part in parts]


class LensingDataModule(BaseImageDataModule):
    """Strong-lensing substructure classification (EqCvT, Sachdev 2022): class folders of single-channel images.

    Layout: ``data_dir/<class>/<file>`` with one folder per class (EqCvT's ``lenses.tgz``: ``no_sub/`` and
    ``sub/``, 5,000 images each). Classes are the sorted names of the non-hidden sub-folders, so labels are
    ``no_sub = 0``, ``sub = 1``; ``num_classes`` must equal the number of folders. Files with the suffixes
    ``.npy``, ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff`` are used (sorted by name), others
    ignored; see :func:`read_lensing_image` for how each becomes a grey image in [0, 1].

    Splits: the original work had only train/val (``splitfolders`` 0.9/0.1). Here a seeded (``split_seed``),
    class-stratified split into ``train_fraction``/``val_fraction``/``test_fraction`` (0.8/0.1/0.1: 8,000 /
    1,000 / 1,000) of the files; every split must end up non-empty.

    Images: centre-cropped to ``crop_size`` when set, then resized to ``image_size`` (default 129, odd so that
    escnn models can be exactly equivariant to 90-degree rotations; the original cropped 128 and padded one
    row and column to reach 129, which moves the centre). Items are read lazily, one file per item; a file
    that cannot be read raises :class:`~datamodules.errors.DataFileError` naming it. ``setup`` checks the
    folders, not every file.

    Images are ``(1, image_size, image_size)`` floats in [0, 1], not normalised. ``mean``/``std`` default to
    0/1 (no normalisation, as the original); set them to the training split's statistics if wanted.
    """

    in_channels = 1

    def __init__(
        self,
        data_dir: str = "data/lensing",
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        split_seed: int = 0,
        augmentation: str = "none",
        train_fraction: float = 0.8,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        crop_size: Optional[int] = None,
        npy_scaling: str = "none",
        num_classes: int = 2,
        in_channels: Optional[int] = None,
        image_size: int = 129,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ):
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            split_seed=split_seed,
            augmentation=augmentation,
            in_channels=in_channels,
        )
        fractions = (train_fraction, val_fraction, test_fraction)
        if min(fractions) <= 0.0 or sum(fractions) > 1.0 + 1e-9:
            raise ValueError(f"train/val/test fractions must be > 0 and sum to at most 1, got {fractions}")
        if npy_scaling not in NPY_SCALINGS:
            raise ValueError(f"npy_scaling must be one of {NPY_SCALINGS}, got {npy_scaling!r}")
        if image_size < 1 or (crop_size is not None and crop_size < 1):
            raise ValueError(f"image_size ({image_size}) and crop_size ({crop_size}) must be positive")
        if len(mean) != 1 or len(std) != 1:
            raise ValueError(f"lensing images have 1 channel: mean/std need 1 value, got {list(mean)} / {list(std)}")
        self.fractions = fractions
        self.crop_size, self.npy_scaling = crop_size, npy_scaling
        self.num_classes, self.image_size = num_classes, image_size
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.classes: Optional[list[str]] = None

    def class_folders(self) -> list[Path]:
        """The sorted class folders of ``data_dir``; checks that they match ``num_classes`` and hold files."""
        root = Path(self.data_dir)
        if not root.is_dir():
            raise DataFileError(root, "not found (the lensing data folder is missing)", f"To get it, {DOWNLOAD_HINT}")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataFileError(root, "holds no class folders", f"To get the data, {DOWNLOAD_HINT}")
        if len(folders) != self.num_classes:
            names = ", ".join(p.name for p in folders)
            nested = ""
            if len(folders) == 1 and any(p.is_dir() for p in folders[0].iterdir()):
                nested = f" (did you mean data.data_dir={folders[0]}?)"
            raise DataFileError(
                root,
                f"holds {len(folders)} class folder(s) ({names}) but num_classes={self.num_classes}{nested}",
                f"Set data.num_classes={len(folders)} or point data.data_dir at the folder "
                f"whose sub-folders are the classes",
            )
        for folder in folders:
            if not self._files(folder):
                raise DataFileError(
                    folder,
                    f"holds no image files ({', '.join(NPY_SUFFIXES + IMAGE_SUFFIXES)})",
                    f"Put the class's images there, or remove the folder; to get the data, {DOWNLOAD_HINT}",
                )
        return folders

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        suffixes = NPY_SUFFIXES + IMAGE_SUFFIXES
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)

    def prepare_data(self) -> None:
        """Nothing to download (no public direct link); checks the folders and says how to get the data."""
        self.class_folders()

    def setup(self, stage: Optional[str] = None) -> None:
        """List the files, split them (all three splits, whatever ``stage``); a second call does nothing."""
        if self.train_set is not None:
            return
        folders = self.class_folders()
        self.classes = [folder.name for folder in folders]
        paths, labels = [], []
        for label, folder in enumerate(folders):
            files = self._files(folder)
            paths += files
            labels += [label] * len(files)
        label_tensor = torch.tensor(labels, dtype=torch.long)
        splits = stratified_split(label_tensor, self.fractions, self.split_seed)
        for name, indices in zip(("train", "val", "test"), splits):
            if len(indices) == 0:
                raise DataFileError(
                    self.data_dir,
                    f"has too few files ({len(paths)}) for a non-empty {name} split with fractions {self.fractions}",
                    "Add files or change data.train_fraction/val_fraction/test_fraction",
                )
        datasets = [
            LensingFileDataset(
                [paths[i] for i in indices],
                label_tensor[indices],
                self.image_size,
                self.crop_size,
                self.npy_scaling,
                self.train_transform if name == "train" else None,
            )
            for name, indices in zip(("train", "val", "test"), splits)
        ]
        self.train_set, self.val_set, self.test_set = datasets

    @classmethod
    def write_fixture(cls, directory: str | Path) -> dict:
        """Two class folders of 10 ring images each (.npy, PNG and JPEG); see
        :meth:`BaseImageDataModule.write_fixture`."""
        from datamodules.fixtures import write_lensing_folders

        write_lensing_folders(Path(directory), per_class=10)
        return {"data_dir": str(directory), "num_workers": 0}
