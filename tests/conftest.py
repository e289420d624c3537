"""Test-wide settings: never touch the network, W&B or a GPU; keep torch to the CI's two cores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_WANDB_TMP = tempfile.mkdtemp(prefix="gevit-wandb-")
os.environ.update(
    {
        "WANDB_MODE": "disabled",
        "WANDB_SILENT": "true",
        "WANDB_DIR": _WANDB_TMP,
        "WANDB_CACHE_DIR": _WANDB_TMP,
        "WANDB_CONFIG_DIR": _WANDB_TMP,
        "WANDB_DATA_DIR": _WANDB_TMP,
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONHASHSEED": "0",
    }
)
os.environ.pop("WANDB_API_KEY", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data when this checkout has it (developer machines, CI); skip otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (optional reference data)")
    return SHARED_DATA
