"""Data modules: every one yields ``(image (C, H, W) float in [0, 1], label int64)`` and knows no model."""

from datamodules.base import BaseImageDataModule, TensorImageDataset
from datamodules.errors import DataFileError, HonestSplitError
from datamodules.lensing import LensingDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.pcam import PCamDataModule
from datamodules.rotmnist import RotMNISTDataModule
from datamodules.rotmnist_mini import RotMNISTMiniDataModule

__all__ = [
    "BaseImageDataModule",
    "DataFileError",
    "HonestSplitError",
    "LensingDataModule",
    "MNISTDataModule",
    "PCamDataModule",
    "RotMNISTDataModule",
    "RotMNISTMiniDataModule",
    "TensorImageDataset",
]
