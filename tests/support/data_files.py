"""Shared by the data module tests: small modules and the check that an error names what it must."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules import (
    RotMNISTDataModule,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DATA = REPO_ROOT / "conf" / "data"


def small_rotmnist(directory, **kwargs) -> RotMNISTDataModule:
    return RotMNISTDataModule(data_dir=str(directory), train_size=20, val_size=10, **kwargs)


def assert_names(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
