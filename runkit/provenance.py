"""Provenance of a run: the code it ran (git commit, dirty work tree) and its ``metrics.json``, written atomically."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from runkit.resolvers import PROJECT_ROOT


def git_state(root: Path = PROJECT_ROOT) -> dict:
    """The commit the code runs at, and whether the work tree has uncommitted changes."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"git_commit": "unknown", "git_dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}


def to_builtin(value: Any) -> Any:
    """Tensors / numpy scalars -> python numbers, recursively (for JSON)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    return value


def write_metrics_json(path: Path, metrics: dict) -> None:
    """``metrics`` as JSON in ``path`` (numbers made plain, NaN/inf as null), via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_builtin(metrics), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
