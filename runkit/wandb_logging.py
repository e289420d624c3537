"""Log finished files (figures, animations) and the numbers behind them to W&B, never failing the caller."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

PROJECT = "gevit"


def scalars(tree: dict, prefix: str = "") -> dict:
    """Flatten the numbers (not lists) of a nested dict into ``a/b/c`` keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def log_files(files: Iterable[Path], summary: dict, out_dir: Path, job_type: str,
              config: Optional[dict] = None) -> bool:
    """Log every PNG as ``wandb.Image`` and every GIF as ``wandb.Video(format="gif")``, and the scalar
    numbers of ``summary`` as the run summary, to project ``gevit`` under ``job_type``. Offline when no
    credentials are found; ``WANDB_MODE`` (online, offline, disabled) always wins. Never raises: on any W&B
    problem it warns (the files stay where they are). Returns whether a run was logged."""
    try:
        import wandb

        mode = None
        if not os.environ.get("WANDB_MODE"):  # wandb reads WANDB_MODE itself
            from lightning_modules.utils import wandb_should_be_offline  # the one credentials check

            mode = "offline" if wandb_should_be_offline() else "online"
        run = wandb.init(project=PROJECT, job_type=job_type, dir=str(out_dir), config=config or {}, mode=mode)
        payload = {}
        for file in map(Path, files):
            if file.suffix == ".gif":
                payload[file.stem] = wandb.Video(str(file), format="gif")
            elif file.suffix == ".png":
                payload[file.stem] = wandb.Image(str(file), caption=file.name)
        run.log(payload)
        run.summary.update(scalars(summary))
        run.finish()
        return True
    except Exception as err:  # W&B is optional here: the files are already on disk
        log.warning("W&B logging failed (%s: %s); the files are in %s", type(err).__name__, err, out_dir)
        return False
