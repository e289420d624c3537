"""Run plumbing around ``train.py`` runs, one module per concern (Lightning/Hydra allowed here, unlike ``gevit/``);
``train.py``, the scripts, the benchmarks and the tests use it.

- :mod:`runkit.resolvers`: the ``${gevit_...}`` resolvers conf/ uses (incl. the data facts read from the
  data module class);
- :mod:`runkit.config`: :func:`~runkit.config.compose` (the config ``train.py <overrides>`` would run, composed in
  Python), building ``_target_`` nodes with errors naming the key, saving/printing the resolved config;
- :mod:`runkit.config_validation`: one validation pass over the composed config before any data is read;
- :mod:`runkit.naming`: how a run is named, grouped and tagged;
- :mod:`runkit.provenance`: git commit/dirty state and ``metrics.json``;
- :mod:`runkit.lifecycle`: run lock, epoch-seeded data order, resume/eval checkpoint checks, memory estimate;
- :mod:`runkit.checkpointing`: how a run writes checkpoints (atomic, every epoch, random streams and run config);
- :mod:`runkit.checkpoints`: reading them — the one safe loader, and
  :func:`~runkit.checkpoints.load_run`, which rebuilds the LightningModule of any ``train.py`` checkpoint;
- :mod:`runkit.wandb_logging`: everything W&B (credentials check, logger identity and summary, rotation
  table, figures, results tables);
- :mod:`runkit.plots`: the accuracy-vs-angle figure;
- :mod:`runkit.sweeps`: multiruns (each sweep claims its own folder; failed Optuna trials do not stop a search);
- :mod:`runkit.slurm`: Slurm settings checked before submission, CPU partitions, clusters without accounting
  (the Hydra plugins that use them are in ``hydra_plugins/gevit_sweeps``).
"""

from runkit.checkpoints import CheckpointError, LoadedRun, load_run

__all__ = ["CheckpointError", "LoadedRun", "load_run"]
