"""The layers of the project stay apart: gevit/ is plain torch + escnn (no Lightning, Hydra or OmegaConf, and
nothing of the training pipeline), so every model is usable from a notebook with one import; every package
imports only the layers below it (gevit -> datamodules / lightning_modules -> runkit -> train.py, scripts,
benchmarks, Hydra plugins), and no module imports itself back through a circle."""

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


# what each layer of the project may import (besides itself and third-party packages)
LAYERS = {
    "gevit": set(),
    "datamodules": {"gevit"},
    "lightning_modules": {"gevit"},
    "runkit": {"gevit", "datamodules", "lightning_modules"},
    "hydra_plugins": {"gevit", "datamodules", "lightning_modules", "runkit"},
}
TOP = {"train", "scripts", "benchmarks"}  # may import every layer, and nothing imports them
PROJECT = set(LAYERS) | TOP


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages (packages by their __init__.py)."""
    modules = {"train": REPO / "train.py"}
    for package in [*LAYERS, "scripts", "benchmarks"]:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, anywhere in the file: ``from a.b import c`` is ``a.b.c`` when c is
    a module, else ``a.b`` (a package's own ancestors, which Python imports first anyway, are left out)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = submodules if len(submodules) == len(node.names) else [*submodules, base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def test_every_layer_imports_only_the_layers_below_it():
    modules = project_modules()
    offenders = {}
    for name, path in modules.items():
        layer = name.split(".")[0]
        allowed = LAYERS.get(layer, PROJECT - TOP) | {layer}
        wrong = sorted(t for t in imported_modules(name, path, modules) if t.split(".")[0] not in allowed)
        if wrong:
            offenders[name] = wrong
    assert not offenders


def test_no_module_imports_itself_back_through_a_circle():
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    circles = []
    for start in graph:  # a path from one of a module's imports back to the module
        seen, stack = set(), list(graph[start])
        while stack:
            current = stack.pop()
            if current == start:
                circles.append(start)
                break
            if current not in seen:
                seen.add(current)
                stack.extend(graph.get(current, ()))
    assert not circles


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
        group="p4", attention_window=3, num_channels=8, num_heads=2, block_sizes=[1], crop_per_layer=0, image_size=8
    )
    assert net(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    assert gevit.models.VisionTransformer()(torch.rand(1, 1, 28, 28)).shape == (1, 10)
