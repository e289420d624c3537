"""The digits the figures draw: the validation split of the embedded RotMNIST-mini set, upright."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _validation_split():
    """The validation split of the embedded digits, upright (``variant=upright_train``, default sizes and
    split seed: the digits ``train.py`` validates on, never the test split)."""
    from datamodules.rotmnist_mini import RotMNISTMiniDataModule

    datamodule = RotMNISTMiniDataModule(variant="upright_train")
    datamodule.setup("fit")
    return datamodule.val_set


def validation_digits(start: int = 0, count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` upright validation digits from index ``start``: images (N, 1, 28, 28) in [0, 1], labels (N,)."""
    dataset = _validation_split()
    if not 0 <= start < len(dataset):
        raise IndexError(f"image index {start} is outside the validation split (0..{len(dataset) - 1})")
    indices = range(start, min(start + count, len(dataset)))
    images, labels = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(images), torch.stack(labels)
