"""RotMNIST with 10 % of the training split (the low-data RotMNIST setting)."""
from __future__ import annotations

from datamodules.rotmnist import RotMNISTDataModule


class RotMNIST10pctDataModule(RotMNISTDataModule):
    """:class:`RotMNISTDataModule` with ``train_fraction=0.1`` by default.

    The train split keeps a class-stratified 10 % of the 10,000 training rows (about 1,000 images: each
    class contributes ``round(0.1 * its count)``), chosen by ``split_seed``, so the subset is reproducible
    and independent of the run seed. Validation (2,000) and test (50,000) are unchanged. All other
    options are those of :class:`RotMNISTDataModule`.
    """

    def __init__(self, *, train_fraction: float = 0.1, **kwargs):
        super().__init__(train_fraction=train_fraction, **kwargs)
