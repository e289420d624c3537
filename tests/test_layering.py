"""The layers of the project stay apart: gevit/ is plain torch + escnn (no Lightning, Hydra or OmegaConf, and
nothing of the training pipeline), so every model is usable from a notebook with one import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "lightning_modules", "datamodules", "train"}


def imported_roots(path: Path) -> set[str]:
    """Top-level package of every import statement in ``path``, including imports inside functions."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_gevit_sources_import_no_training_framework():
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN)
        for path in sorted((REPO / "gevit").rglob("*.py"))
    }
    assert not {path: names for path, names in offenders.items() if names}


@pytest.mark.slow  # a fresh interpreter importing everything (~40 s on 2 loaded cores); the ast scan above runs always
def test_importing_every_gevit_module_loads_no_training_framework():
    code = (
        "import importlib, pkgutil, sys, gevit\n"
        "for info in pkgutil.walk_packages(gevit.__path__, 'gevit.'):\n"
        "    importlib.import_module(info.name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_model_in_a_notebook_takes_one_import():
    import torch

    import gevit

    net = gevit.models.GroupTransformer(
        group="c4", attention_window=3, num_channels=8, num_heads=2, block_sizes=[1], crop_per_layer=0, image_size=8
    )
    assert net(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    assert gevit.create_model("vit")(torch.rand(1, 1, 28, 28)).shape == (1, 10)
