"""RotMNIST-mini: a small RotMNIST-style data set built from the embedded MNIST test digits (offline default)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from datamodules.base import BaseImageDataModule, TensorImageDataset, seeded_split
from datamodules.errors import DataFileError
from datamodules.formats import EMBEDDED_MNIST_DIR, find_file, quantize_uint8, read_mnist_pair

log = logging.getLogger(__name__)

ASSET_DIR = EMBEDDED_MNIST_DIR  # a module attribute, so that tests can point it elsewhere
IMAGES_NAME = "t10k-images-idx3-ubyte"
LABELS_NAME = "t10k-labels-idx1-ubyte"
# md5 of the decompressed official MNIST test files.
IMAGES_MD5 = "2646ac647ad5339dbf082846283269ea"
LABELS_MD5 = "27ae3e4e09519cfbb04c329615203637"
VARIANTS = ("rotated", "upright_train")
N_DIGITS = 10000


class RotMNISTMiniDataModule(BaseImageDataModule):
    """A small RotMNIST-style set made from the 10,000 MNIST test digits shipped with the package.

    This is **not** the RotMNIST benchmark (see :class:`~datamodules.rotmnist.RotMNISTDataModule`); it is
    an offline stand-in that lets ``python train.py`` run with no download. It is built the way RotMNIST
    was: every digit is rotated counter-clockwise by its own angle drawn uniformly from [0, 360) degrees
    (``torch.Generator`` seeded with ``generation_seed``, independent of ``split_seed``), with bilinear
    interpolation and zero padding (:func:`gevit.rotations.rotate`, one batched call, well under a second),
    then quantised back to uint8. Digits stay in MNIST orientation (no transpose, unlike the ``.amat``
    files).

    Splits: the 10,000 digits are divided by ``split_seed`` into ``train_size`` (6,000), ``val_size``
    (1,000) and ``test_size`` (3,000), which must sum to at most 10,000. ``variant="rotated"`` rotates
    every split; ``variant="upright_train"`` keeps train and val upright and rotates only test (the
    MNIST -> rotated setting, in miniature).

    Files: the two IDX files (``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, also accepted
    uncompressed) are read from ``data_dir`` when that folder holds both, otherwise from the embedded
    ``datamodules/assets/mnist`` (so a ``data.data_dir=`` override that holds no copy still works). Either
    way their decompressed md5s must be those of the official MNIST test split, or a DataFileError says
    which file was altered. Nothing is ever downloaded.

    Images are ``(1, 28, 28)`` floats in [0, 1], not normalised. License: MNIST, CC BY-SA 3.0 (see
    ``assets/mnist/LICENSE.md``).
    """

    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self,
        data_dir: Optional[str] = None,
        *,
        variant: str = "rotated",
        generation_seed: int = 0,
        train_size: int = 6000,
        val_size: int = 1000,
        test_size: int = 3000,
        **common,  # BaseImageDataModule's: batch sizes, workers, split_seed, augmentation, shape and stats
    ):
        super().__init__(data_dir=data_dir, **common)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        sizes = (train_size, val_size, test_size)
        if min(sizes) < 0 or sum(sizes) > N_DIGITS:
            raise ValueError(
                f"train_size + val_size + test_size = {sum(sizes)} must be at most {N_DIGITS} "
                f"(and each >= 0); got {sizes}"
            )
        self.variant = variant
        self.generation_seed = generation_seed
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size

    def source_files(self) -> tuple[Path, Path]:
        """The (images, labels) IDX files used: from ``data_dir`` if it holds both, else the embedded ones."""
        directories = [Path(self.data_dir)] if self.data_dir else []
        for directory in directories + [ASSET_DIR]:
            images = find_file([directory], [IMAGES_NAME + ".gz", IMAGES_NAME])
            labels = find_file([directory], [LABELS_NAME + ".gz", LABELS_NAME])
            if images is not None and labels is not None:
                return images, labels
        raise DataFileError(
            ASSET_DIR / (IMAGES_NAME + ".gz"),
            "the embedded MNIST test digits are missing",
            "Restore datamodules/assets/mnist from the repository (git checkout -- "
            "datamodules/assets/mnist) or reinstall the package",
        )

    def prepare_data(self) -> None:
        """Nothing to download; checks that the digits are there (cheap)."""
        self.source_files()

    def generate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All 10,000 digits: upright uint8 ``(N, 1, 28, 28)``, rotated uint8 ``(N, 1, 28, 28)``, labels int64."""
        images_path, labels_path = self.source_files()
        if images_path.parent != ASSET_DIR:
            log.info("RotMNIST-mini: using the MNIST test digits in %s", images_path.parent)
        fix = (
            "Restore the original file (git checkout -- datamodules/assets/mnist, or copy the official "
            "MNIST t10k files there)"
        )
        images, labels = read_mnist_pair(images_path, labels_path, IMAGES_MD5, LABELS_MD5, fix=fix)
        upright = torch.from_numpy(images).unsqueeze(1)
        generator = torch.Generator().manual_seed(self.generation_seed)
        angles = torch.rand(len(upright), generator=generator, dtype=torch.float64) * 360.0
        from gevit.rotations import rotate  # plain torch helper; datamodules still know no model

        rotated = rotate(upright.float().div(255.0), angles.float(), interpolation="bilinear", padding_mode="zeros")
        rotated = torch.from_numpy(quantize_uint8(rotated.numpy()))
        return upright, rotated, torch.from_numpy(labels)

    def setup(self, stage: Optional[str] = None) -> None:
        """Build train/val/test (all three, whatever ``stage``); a second call does nothing."""
        if self.train_set is not None:
            return
        upright, rotated, labels = self.generate()
        train_idx, val_idx, test_idx = seeded_split(
            len(labels), [self.train_size, self.val_size, self.test_size], self.split_seed
        )
        fit_images = upright if self.variant == "upright_train" else rotated
        self.train_set = TensorImageDataset(fit_images[train_idx], labels[train_idx], self.train_transform)
        self.val_set = TensorImageDataset(fit_images[val_idx], labels[val_idx])
        self.test_set = TensorImageDataset(rotated[test_idx], labels[test_idx])

    @classmethod
    def write_fixture(cls, directory: str | Path) -> dict:
        """A copy of the two embedded IDX files (the only digits it accepts) and small splits; see
        :meth:`BaseImageDataModule.write_fixture`."""
        import shutil

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in (IMAGES_NAME, LABELS_NAME):
            shutil.copyfile(ASSET_DIR / f"{name}.gz", directory / f"{name}.gz")
        return {"data_dir": str(directory), "train_size": 32, "val_size": 16, "test_size": 16}
