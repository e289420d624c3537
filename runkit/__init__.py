"""Run plumbing around ``train.py`` runs, one module per concern (Lightning/Hydra allowed here, unlike ``gevit/``).

- :mod:`runkit.checkpoints`: :func:`~runkit.checkpoints.load_run` rebuilds the LightningModule of any
  ``train.py`` checkpoint from the config stored in it;
- :mod:`runkit.wandb_logging`: logging finished files (figures, animations) and numbers to W&B.
"""
from runkit.checkpoints import CheckpointError, LoadedRun, load_run

__all__ = ["CheckpointError", "LoadedRun", "load_run"]
