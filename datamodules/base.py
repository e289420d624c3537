"""Common machinery of every data module: split seeds, loaders, augmentation and the honest-split guard.

Every data module yields ``(image, label)`` with ``image`` a float tensor ``(C, H, W)`` in ``[0, 1]``
(no normalisation: the LightningModule normalises, so rotations and zero padding act on the raw image
whose background is 0) and ``label`` an int64 scalar. It exposes ``num_classes``, ``in_channels``,
``image_size`` and ``mean``/``std`` for the model's input normalisation: stated once, by the class
(:meth:`BaseImageDataModule.data_fact`), and carried into the data config by ``conf/data/_facts.yaml`` so that
models can interpolate them (``${data.num_classes}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datamodules.errors import DataFileError, HonestSplitError

AUGMENTATIONS = ("none", "rotation", "rot90", "rot90_flip")
# The exact augmentations draw a random element of a gevit.groups group (p4: quarter turns; p4m: and mirrors).
AUGMENTATION_GROUPS = {"rot90": "p4", "rot90_flip": "p4m"}


def _processes() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class EvaluationShardSampler(DistributedSampler):
    """Process ``r`` of ``W`` evaluates images ``r, r + W, r + 2W, ...``: every image exactly once, in order, with
    shards that may differ by one image. (``DistributedSampler`` pads the shards to equal length with repeated
    images, which would count them twice in a test metric.) A ``DistributedSampler``, so Lightning keeps it."""

    def __init__(self, dataset: Dataset):
        super().__init__(dataset, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class TensorImageDataset(Dataset):
    """In-memory images ``(N, C, H, W)`` stored as uint8 (0..255) or float, labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None):
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def random_augmentation(name: str, seed: Optional[int] = None) -> Optional[Callable]:
    """A per-image training augmentation on ``(C, H, W)`` tensors in [0, 1].

    ``rotation``: uniform angle in [0, 360), bilinear, zero padding (the RotMNIST recipe);
    ``rot90``: a uniformly random element of p4, a multiple of 90 degrees (exact); ``rot90_flip``: of p4m
    (an optional horizontal mirror, then a quarter turn; :mod:`gevit.groups`). Uses torch's global RNG,
    which Lightning seeds per worker.
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")
    if name == "none":
        return None
    if name in AUGMENTATION_GROUPS:
        from gevit.groups import get_group  # plain torch; datamodules still know no model

        group = get_group(AUGMENTATION_GROUPS[name])
        return lambda image: group.act_on_images(image, group.random_element())

    def augment(image: torch.Tensor) -> torch.Tensor:
        return rotate_chw(image, float(torch.rand(()) * 360.0))

    return augment


def rotate_chw(image: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Rotate one ``(C, H, W)`` image counter-clockwise by ``angle_deg`` (bilinear, zero padding)."""
    from gevit.rotations import rotate  # plain torch helper; datamodules still know no model

    return rotate(image.unsqueeze(0), angle_deg).squeeze(0)


def seeded_split(n: int, sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into consecutive chunks of a seeded permutation."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {list(sizes)} exceed the {n} available examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for size in sizes:
        out.append(perm[start : start + size])
        start += size
    return out


def subsample_indices(n: int, fraction: float, seed: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A seeded subset of ``fraction`` of ``range(n)``; class-stratified when ``labels`` are given.

    Indices come back sorted so the subset keeps the file's order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        keep = max(1, round(n * fraction))
        return torch.randperm(n, generator=generator)[:keep].sort().values
    chosen = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        keep = max(1, round(len(members) * fraction))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


class BaseImageDataModule(L.LightningDataModule):
    """Loaders, split seed and the honest-split guard shared by every data module.

    Subclasses implement :meth:`setup` and fill ``self.train_set``, ``self.val_set``, ``self.test_set``.

    ``split_seed`` fixes which examples land in train/val (and any subsampling); it is deliberately
    separate from the run seed so that changing ``seed=`` re-initialises the model, not the data.

    The test loader refuses to be built while the trainer is fitting: checkpoint selection and early
    stopping can only ever see validation data.
    """

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        split_seed: int = 0,
        augmentation: str = "none",
        num_classes: Optional[int] = None,
        in_channels: Optional[int] = None,
        image_size: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        # The data config carries these facts (read from this class by conf/data/_facts.yaml) so that model
        # configs can interpolate them (${data.num_classes}); they describe the files, so a value that
        # disagrees with the class is a config error.
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("mean", mean),
            ("std", std),
        ):
            expected = getattr(type(self), name, None)
            if value is None or expected is None:
                continue
            same = (
                tuple(float(v) for v in value) == tuple(float(v) for v in expected)
                if isinstance(expected, tuple)
                else value == expected
            )
            if not same:
                raise ValueError(
                    f"{type(self).__name__}: {name}={value!r} in the config, but the data set "
                    f"has {name}={expected!r}; remove the override"
                )
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augmentation!r}; choose one of {AUGMENTATIONS}")
        if data_dir and Path(data_dir).is_file():
            raise DataFileError(
                data_dir, "is a file, not a folder", "Point data.data_dir at the folder that holds the data files"
            )
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.split_seed = split_seed
        self.augmentation = augmentation
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.test_loader_calls = 0

    @classmethod
    def data_fact(cls, name: str):
        """The data fact ``name`` (``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std``) of this data
        set: the class attribute where the files fix it, else the constructor's default (a fact that is an
        option of the module, e.g. the lensing images' ``image_size``). ``conf/data/_facts.yaml`` reads it."""
        value = getattr(cls, name, None)
        if value is None:
            import inspect

            parameter = inspect.signature(cls.__init__).parameters.get(name)
            value = None if parameter is None or parameter.default is parameter.empty else parameter.default
        if value is None:
            raise ValueError(f"{cls.__name__} states no {name} (neither a class attribute nor a constructor default)")
        return value

    # ---- loaders -------------------------------------------------------------------------------
    def _loader(self, dataset: Optional[Dataset], split: str, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not build the {split} split")
        # Evaluation under several processes: each image exactly once (a padded sampler would count duplicates)
        sampler = EvaluationShardSampler(dataset) if not shuffle and _processes() > 1 else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.state.fn is not None and trainer.state.fn.value == "fit":
            raise HonestSplitError(
                "the test loader was requested while fitting; model selection must use the "
                "validation split only (test once, after fit, on the selected checkpoint)"
            )
        self.test_loader_calls += 1
        return self._loader(self.test_set, "test", False, self.eval_batch_size)

    @classmethod
    def write_fixture(cls, directory: str | Path) -> dict:
        """Write a tiny copy of the data set, in its exact on-disk format, into ``directory`` and return the
        constructor options (``data.<key>`` overrides) that make this module read it small and fast.

        Every data module implements it (with the writers of :mod:`datamodules.fixtures`), so that the config
        tests train each ``conf/data/*.yaml`` on real-format files without knowing the data set.
        """
        raise NotImplementedError(
            f"{cls.__name__} has no write_fixture: a data module writes its own tiny "
            "real-format test data (see datamodules/fixtures.py) for the config tests"
        )

    @property
    def train_transform(self) -> Optional[Callable]:
        return random_augmentation(self.augmentation)

    def describe(self) -> dict:
        """Sizes of the splits, for logs and ``metrics.json``."""
        return {
            split: (len(ds) if ds is not None else None)
            for split, ds in (("train", self.train_set), ("val", self.val_set), ("test", self.test_set))
        }
