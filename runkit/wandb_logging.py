"""Everything W&B, in one place: the credentials check, a training run's logger identity and summary, the
rotation-robustness table, finished files (figures, animations) and results tables. Every function here leaves
the caller running when W&B is missing or fails; none needs credentials (offline without them)."""

from __future__ import annotations

import csv
import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Optional

log = logging.getLogger(__name__)

PROJECT = "gevit"


def wandb_should_be_offline() -> bool:
    """Offline when the user set nothing and no credentials are found; WANDB_MODE always wins."""
    if os.environ.get("WANDB_MODE"):
        return False  # wandb reads WANDB_MODE itself (online, offline or disabled)
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" not in netrc.read_text()
    except OSError:
        return True


# ---- a train.py run (through Lightning's WandbLogger) ----------------------------------------------------
def configure_wandb(cfg, identity: dict) -> None:
    """Fill the W&B logger's empty name/group and extend its tags with the run's identity
    (:func:`runkit.naming.run_identity`)."""
    from omegaconf import open_dict

    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return
    with open_dict(node):
        node.name = node.get("name") or identity["name"]
        node.group = node.get("group") or identity["group"]
        node.tags = list(dict.fromkeys([*(node.get("tags") or []), *identity["tags"]]))


# How long wandb.init may wait for W&B's server (seconds; wandb's own default is several minutes). WANDB_INIT_TIMEOUT,
# when set, wins.
INIT_TIMEOUT_S = 30


def start_wandb_runs(trainer) -> None:
    """Start the W&B run of every W&B logger now, online within :data:`INIT_TIMEOUT_S` seconds; a run that cannot
    reach W&B's server continues offline with a warning (it is written under the run directory: ``wandb sync`` it
    later), so a network problem never costs a training run."""
    os.environ.setdefault("WANDB_INIT_TIMEOUT", str(INIT_TIMEOUT_S))
    for logger in wandb_loggers(trainer):
        try:
            logger.experiment
        except Exception as err:
            if logger._wandb_init.get("mode") == "offline" or os.environ.get("WANDB_MODE") == "disabled":
                raise
            log.warning(
                "W&B could not start online (%s: %s) within WANDB_INIT_TIMEOUT=%ss; continuing offline, the run is "
                "written under %s (`wandb sync` it later; WANDB_MODE=offline skips the attempt)",
                type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "",
                os.environ["WANDB_INIT_TIMEOUT"],
                logger.save_dir,
            )
            finish_wandb()
            logger._wandb_init["mode"] = "offline"
            logger._experiment = None
            os.environ["WANDB_MODE"] = "offline"  # the mode wandb reads first, for this process
            logger.experiment


def wandb_loggers(trainer) -> list:
    """The trainer's ``WandbLogger``s (none when W&B is not configured)."""
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def update_wandb_summary(trainer, values: dict) -> None:
    """Put the numbers of ``values`` into the run summary of every W&B logger."""
    for logger in wandb_loggers(trainer):
        logger.experiment.summary.update({k: v for k, v in values.items() if isinstance(v, (int, float))})


def log_rotation_robustness(trainer, results: dict) -> None:
    """The accuracy-vs-angle results as a W&B table and line plot (``test/rotation_robustness``,
    ``test/accuracy_vs_angle``) on every W&B logger of ``trainer``."""
    for logger in wandb_loggers(trainer):
        import wandb

        table = wandb.Table(
            columns=["angle_deg", "accuracy", "invariance_error"],
            data=[list(row) for row in zip(results["angles"], results["accuracy"], results["invariance_error"])],
        )
        logger.experiment.log(
            {
                "test/rotation_robustness": table,
                "test/accuracy_vs_angle": wandb.plot.line(
                    table, "angle_deg", "accuracy", title="Test accuracy vs rotation angle"
                ),
            }
        )


def finish_wandb() -> None:
    """Close the W&B run (if any) so the next job of a multirun starts a fresh one."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# ---- files and tables logged after the fact -------------------------------------------------------------


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


def log_files(
    files: Iterable[Path], summary: dict, out_dir: Path, job_type: str, config: Optional[dict] = None
) -> bool:
    """Log every PNG as ``wandb.Image`` and every GIF as ``wandb.Video(format="gif")``, and the scalar
    numbers of ``summary`` as the run summary, to project ``gevit`` under ``job_type``. Offline when no
    credentials are found; ``WANDB_MODE`` (online, offline, disabled) always wins. Never raises: on any W&B
    problem it warns (the files stay where they are). Returns whether a run was logged."""
    try:
        import wandb

        mode = None
        if not os.environ.get("WANDB_MODE"):  # wandb reads WANDB_MODE itself
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


def log_results_table(results_csv: Path, markdown: str, groups: set, project: str = PROJECT) -> None:
    """A results table (``scripts/results_table.py``: its CSV as a W&B Table, its markdown as text) in a run of
    job type ``results_table``, grouped with the sweep's runs when they share one group."""
    try:
        import wandb
    except ImportError:
        print("wandb is not installed: the table stays in local files", file=sys.stderr)
        return
    groups = set(groups) - {None}
    run = wandb.init(
        project=project,
        job_type="results_table",
        group=groups.pop() if len(groups) == 1 else None,
        mode="offline" if wandb_should_be_offline() else None,
    )
    if run is None or getattr(run, "disabled", False):
        return
    with open(results_csv) as f:
        rows = list(csv.reader(f))
    run.log(
        {
            "results/table": wandb.Table(columns=rows[0], data=rows[1:]),
            "results/markdown": wandb.Html(f"<pre>{markdown}</pre>"),
        }
    )
    run.finish()
