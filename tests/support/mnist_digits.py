"""The embedded real MNIST test digits, for tests that need real images (no data module involved)."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).resolve().parents[2] / "datamodules" / "assets" / "mnist"


@lru_cache(maxsize=1)
def mnist_test_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """(images float (10000, 1, 28, 28) in [0, 1], labels int64 (10000,)) in MNIST orientation."""
    images = np.frombuffer(gzip.open(ASSETS / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(ASSETS / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))
