"""gevit's Hydra plugins (Hydra takes launchers and sweepers only from the ``hydra_plugins`` namespace): thin
subclasses of hydra-submitit-launcher's Slurm launcher and hydra-optuna-sweeper's sweeper; what they add is in
:mod:`runkit.slurm` and :mod:`runkit.sweeps`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _OptunaSweeper
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """conf/hydra/launcher/slurm.yaml: no ``--gpus-per-node`` without GPUs, and job states read from squeue
    where the cluster keeps no accounting (its settings are checked before, by ``runkit.sweeps.SweepCallback``)."""

    def __init__(self, **params: Any) -> None:
        from runkit.slurm import submission_parameters

        super().__init__(**params)
        self.params = submission_parameters(self.params)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from runkit.slurm import poll_without_sacct_where_needed

        poll_without_sacct_where_needed()
        return super().launch(job_overrides, initial_job_idx)


class OptunaSweeper(_OptunaSweeper):
    """conf/hparams_search/optuna.yaml: a trial that crashed, returned NaN or never validated is a failed trial
    and the search goes on (with ``max_failure_rate: 1.0``); a search in which none completed still writes
    ``optimization_results.yaml``, saying so, before it ends with an error."""

    def setup(self, **kwargs: Any) -> None:
        from runkit.sweeps import TrialResults

        super().setup(**kwargs)
        self.sweeper.launcher = TrialResults(self.sweeper.launcher)

    def sweep(self, arguments: list[str]) -> None:
        from runkit.sweeps import record_search_without_result

        try:
            return super().sweep(arguments)
        except ValueError as err:
            if "No trials are completed yet" not in str(err):
                raise
            raise record_search_without_result(Path(str(self.sweeper.config.hydra.sweep.dir))) from None
