"""Figure 5: accuracy against the rotation angle of several ``train.py`` runs on one figure."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from runkit.plots import plot_rotation_robustness
from scripts.figures.common import load_model

log = logging.getLogger(__name__)


def read_robustness_curve(run_dir: str | Path) -> dict:
    """A run's accuracy under rotation: ``{"angles": [...], "accuracy": [...], "num_samples": n}`` from
    ``metrics.json`` (``rotation_robustness``) or, failing that, ``rotation_robustness.csv``."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        stored = json.loads(metrics_path.read_text()).get("rotation_robustness")
        if isinstance(stored, dict) and stored.get("angles") and stored.get("accuracy"):
            return {
                "angles": list(stored["angles"]),
                "accuracy": list(stored["accuracy"]),
                "num_samples": stored.get("num_samples"),
            }
    csv_path = run_dir / "rotation_robustness.csv"
    if csv_path.is_file():
        with csv_path.open() as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            return {
                "angles": [float(r["angle_deg"]) for r in rows],
                "accuracy": [float(r["accuracy"]) for r in rows],
                "num_samples": int(float(rows[0]["num_samples"])),
            }
    raise FileNotFoundError(
        f"{run_dir} has no rotation robustness results (metrics.json 'rotation_robustness' or "
        "rotation_robustness.csv); is it a completed train.py run directory?"
    )


def run_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The run's ``checkpoints/last.ckpt``, else its newest checkpoint, else None."""
    folder = Path(run_dir) / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def describe_run(run_dir: str | Path) -> Optional[str]:
    """What the run trained, from its rebuilt checkpoint (``ViT, 1 blocks, ...``, ``GE-ViT p4, 3x3 local
    attention``, ``post-hoc lambda over p4 on VisionTransformer (regime aggregator_only)``); without a
    loadable checkpoint, the class named by its ``config_resolved.yaml``; else None."""
    checkpoint = run_checkpoint(run_dir)
    if checkpoint is not None:
        try:
            return load_model(checkpoint).description()
        except (OSError, ValueError, ImportError) as err:
            log.warning("cannot rebuild %s to name the run (%s); naming it from its config", checkpoint, err)
    path = Path(run_dir) / "config_resolved.yaml"
    if not path.is_file():
        return None
    import yaml

    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    net = model.get("net") if isinstance(model.get("net"), dict) else {}
    target = str(net.get("_target_") or model.get("_target_") or "")
    return target.rsplit(".", 1)[-1] or None


def run_label(run_dir: str | Path) -> str:
    """``<run directory name>: <model>`` (see :func:`describe_run`)."""
    run_dir = Path(run_dir)
    described = describe_run(run_dir)
    return f"{run_dir.name}: {described}" if described else run_dir.name


def plot_robustness_comparison(
    runs: dict[str, str | Path] | Sequence[str | Path], path: str | Path, title: str = "Test accuracy under rotation"
) -> tuple[Path, dict]:
    """One accuracy-vs-angle figure for several runs (``{label: run_dir}`` or run dirs, labelled by
    :func:`run_label`), drawn by :func:`runkit.plots.plot_rotation_robustness`.
    Returns the PNG path and the curves ``{label: {"angles", "accuracy", "num_samples", "run_dir"}}``."""
    labelled = runs.items() if isinstance(runs, dict) else [(run_label(r), r) for r in runs]
    curves: dict = {}
    for label, run_dir in labelled:
        curve = read_robustness_curve(run_dir)
        name = f"{label} (n={curve['num_samples']})" if curve.get("num_samples") else label
        unique, copy = name, 2
        while unique in curves:
            unique, copy = f"{name} #{copy}", copy + 1
        curves[unique] = {**curve, "run_dir": str(run_dir)}
    if not curves:
        raise ValueError("the robustness comparison needs at least one run directory")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_rotation_robustness(curves, path, title=title)
    return path, curves
