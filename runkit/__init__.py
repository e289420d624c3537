"""Run plumbing around ``train.py`` runs, one module per concern (Lightning/Hydra allowed here, unlike ``gevit/``);
``train.py``, the scripts, the benchmarks and the tests use it.

- :mod:`runkit.resolvers`: the ``${gevit_...}`` resolvers conf/ uses (incl. the data facts read from the
  data module class);
- :mod:`runkit.config`: :func:`~runkit.config.compose` (the config ``train.py <overrides>`` would run, composed in
  Python), building ``_target_`` nodes with errors naming the key, saving/printing the resolved config;
- :mod:`runkit.config_validation`: one validation pass over the composed config before any data is read;
- :mod:`runkit.naming`: how a run is named, grouped and tagged;
- :mod:`runkit.provenance`: git commit/dirty state and ``metrics.json``;
- :mod:`runkit.run_lock`: one process per run directory (``run.lock``);
- :mod:`runkit.run_dir`: what a run directory already holds decides what a run does (resume, done, refuse, set
  aside), checked before anything is written;
- :mod:`runkit.run_config`: what a checkpoint belongs to, and the resume/evaluate checks;
- :mod:`runkit.stopping`: signals at any point of a run become a status and an exit code;
- :mod:`runkit.callbacks`: the training callbacks (rotation robustness at test time, epoch summaries,
  throughput, preemption rehearsal);
- :mod:`runkit.data_order`: the training order and the workers' random streams as functions of (seed, epoch);
- :mod:`runkit.memory`: the memory estimate before the first batch;
- :mod:`runkit.trusted_targets`: the ``_target_``s a stored config may name (a stored config is data);
- :mod:`runkit.checkpoint_writing`: how a run writes checkpoints (atomic, every epoch, random streams and run config);
- :mod:`runkit.checkpoint_loading`: reading them — the one safe loader, and
  :func:`~runkit.checkpoint_loading.load_run`, which rebuilds the LightningModule of any ``train.py`` checkpoint;
- :mod:`runkit.wandb_logging`: everything W&B (credentials check, logger identity and summary, rotation
  table, figures, results tables);
- :mod:`runkit.plots`: the accuracy-vs-angle figure;
- :mod:`runkit.sweeps`: multiruns (each sweep claims its own folder; failed Optuna trials do not stop a search);
- :mod:`runkit.slurm`: Slurm settings checked before submission, CPU partitions, clusters without accounting
  (the Hydra plugins that use them are in ``hydra_plugins/gevit_sweeps``).
"""

from runkit.checkpoint_loading import CheckpointError, LoadedRun, load_run

__all__ = ["CheckpointError", "LoadedRun", "load_run"]
