"""Train, select on validation, test once, measure rotation robustness.

    python train.py                                   # ViT on the embedded RotMNIST-style set, offline
    python train.py data=rotmnist data.data_dir=DIR   # the real benchmark
    python train.py experiment=vit_pcam logger=wandb
    python train.py train=false ckpt_path=RUN/checkpoints/best-....ckpt   # evaluate a checkpoint
    python train.py hydra.run.dir=RUN ...same overrides...   # resume an interrupted run (auto_resume)

Everything is built from conf/ with ``hydra.utils.instantiate``; every run writes its checkpoints,
``metrics.json``, ``rotation_robustness.{csv,png}`` and resolved config into its output directory.
The lifecycle guarantees (a checkpoint every epoch, exact resume, one process per run directory, exit
codes that say what happened, safe checkpoint loading) are listed in README "Guarantees".
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional

import gevit.openmp  # noqa: F401  # isort: skip  (before lightning imports torch: OpenMP wait policy)
import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from lightning_modules.callbacks import RotationRobustnessCallback, run_summary
from runkit.checkpoint_loading import load_checkpoint
from runkit.checkpoint_writing import AtomicCheckpointIO, RunStateCallback
from runkit.config import instantiate_collection, instantiate_named, save_config
from runkit.config_validation import ConfigError, validate_config
from runkit.data_order import seed_training_order
from runkit.memory import check_memory
from runkit.naming import run_identity
from runkit.provenance import git_state, write_metrics_json
from runkit.resolvers import register_resolvers
from runkit.run_config import build_run_config, check_eval_checkpoint, check_resume_checkpoint, stored_run_config
from runkit.run_dir import done_message, has_records, plan_run
from runkit.run_lock import LOCK_FILE, RunLock, is_launching_process
from runkit.wandb_logging import configure_wandb, finish_wandb, start_wandb_runs, update_wandb_summary

log = logging.getLogger("train")
register_resolvers()

# Exit codes of a run stopped by a signal (the shell's convention, 128 + signal number).
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 128 + signal.SIGINT


def output_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def cluster_plugins() -> list:
    """Exactly one of submitit and Lightning requeues a preempted or timed-out Slurm job.

    Under submitit (``hydra/launcher=slurm``) submitit does: it catches USR2, pickles the job and requeues
    it, and the requeued job resumes from its own ``last.ckpt`` (``auto_resume``). Lightning's own
    requeue (on USR1) is then switched off. Under a plain ``sbatch`` Lightning keeps its default."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def selection_callback(trainer: L.Trainer):
    """The ModelCheckpoint that selects on validation (not the every-epoch ``last.ckpt`` writer)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def selected_checkpoint(trainer: L.Trainer) -> Optional[str]:
    callback = selection_callback(trainer)
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def config_choices() -> dict:
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    return {
        str(k): (None if v is None else str(v)) for k, v in (hydra_cfg.runtime.choices.items() if hydra_cfg else [])
    }


def check_schedule(cfg: DictConfig) -> None:
    """Refuse, before any work, a training schedule that can never validate (nothing could be selected)."""
    if not cfg.train:
        return
    trainer = cfg.trainer
    for key in ("max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}=0: this run would train nothing and test untrained weights; give it epochs, "
                "or evaluate a checkpoint with train=false ckpt_path=..."
            )
    if trainer.get("limit_val_batches") in (0, 0.0):
        raise ConfigError(
            "trainer.limit_val_batches=0: this run would never validate, so no checkpoint could be "
            "selected; give it validation batches, or evaluate with train=false"
        )
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if (
        isinstance(every, int)
        and isinstance(epochs, int)
        and epochs > 0
        and every > epochs
        and trainer.get("max_steps", -1) in (-1, None)
        and not trainer.get("val_check_interval")
    ):
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}: this run would "
            "never validate; lower check_val_every_n_epoch"
        )


class _SignalGuard:
    """SIGTERM at any point of a run ends it with the status and exit code 143.

    Where Lightning's own handler is installed (inside its fit/validate/test loops) it stops at the next batch
    boundary, which keeps checkpoints whole; this handler, which Lightning calls too, only records the signal,
    and :meth:`raise_if_received` raises it as soon as the trainer returns (a signal at the last batch, in the
    epoch-end hooks or in data preparation is not lost). Everywhere else (data preparation, model building,
    between fit and test, writing outputs) it raises at once."""

    def __init__(self):
        self.received = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook runner): leave signals alone
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.received = True
        if signal.getsignal(signal.SIGTERM) == self._handle:  # Lightning's handler is not installed
            raise SIGTERMException()

    def raise_if_received(self) -> None:
        if self.received:
            raise SIGTERMException()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def quiet_secondary_process() -> None:
    """Keep only warnings and errors of a DDP process that is not rank 0 (they share rank 0's log file)."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setLevel(max(handler.level, logging.WARNING))


def _stop_reason(err: BaseException) -> tuple[str, Optional[int]]:
    """(metrics.json status, exit code to raise instead; None = re-raise ``err``) of an exception ending a run."""
    if isinstance(err, SIGTERMException):
        return "interrupted: SIGTERM", EXIT_SIGTERM
    if isinstance(err, KeyboardInterrupt) or (
        isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt)
    ):
        return "interrupted: SIGINT", EXIT_SIGINT
    if isinstance(err, SystemExit):
        if os.environ.get("SUBMITIT_EXECUTOR") and err.code == -1:
            # submitit checkpointed and requeued the job; the requeued job resumes and overwrites this file
            return "requeued", None
        return f"interrupted: SystemExit({err.code})", None if err.code not in (None, 0) else 1
    return f"failed: {type(err).__name__}: {err}", None


def run(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one configured job; returns (metrics, objects) where objects holds the trainer, model and
    data module for callers that want to inspect them (tests, notebooks)."""
    started = time.time()
    out_dir = output_dir_of(cfg)
    main_process = is_launching_process()
    try:
        check_options(cfg)
    except Exception as err:
        if main_process:
            record_refused_start(out_dir, cfg, err, started)
        raise
    if not main_process:  # DDP processes started beside this run: its log lines come from rank 0 only
        quiet_secondary_process()
    run_config = build_run_config(
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(cfg.data, resolve=True),
        OmegaConf.to_container(cfg.trainer, resolve=True),
        cfg.seed,
        config_choices(),
    )
    lock = RunLock(out_dir)
    metrics: dict = {"status": "started", "output_dir": str(out_dir), "seed": cfg.seed}
    objects: dict = {}
    recording = False  # metrics.json is written only by a run that got past the checks of its directory
    try:
        with _SignalGuard() as guard:
            if main_process:
                lock.acquire()
            plan = plan_run(out_dir, _run_settings(cfg), owner=main_process)
            if plan.action == "done":
                log.info(done_message(out_dir, plan.finished or {}))
                return plan.finished or {}, objects
            _check_checkpoint(cfg, plan.resume_from, run_config)
            recording = True
            _run(cfg, out_dir, metrics, objects, guard, main_process, run_config, plan.resume_from)
        metrics["status"] = "completed"
    except BaseException as err:
        metrics["status"], exit_code = _stop_reason(err)
        if exit_code is not None:
            raise SystemExit(exit_code) from err
        raise
    finally:
        metrics["duration_s"] = round(time.time() - started, 2)
        trainer = objects.get("trainer")
        if recording and (trainer.is_global_zero if trainer is not None else main_process):
            write_metrics_json(out_dir / "metrics.json", metrics)
        finish_wandb()
        lock.release()
    return metrics, objects


def check_options(cfg: DictConfig) -> None:
    """Everything about the options that can be refused before the run directory is looked at."""
    validate_config(cfg)
    if not cfg.train and not cfg.test:
        raise ValueError("train=false and test=false: nothing to do")
    if not cfg.train and not cfg.get("ckpt_path"):
        raise ValueError("train=false needs ckpt_path=FILE (the checkpoint to evaluate)")
    check_schedule(cfg)


def record_refused_start(out_dir: Path, cfg: DictConfig, err: BaseException, started: float) -> None:
    """A job refused for its options leaves a ``failed: ...`` metrics.json, so that a sweep's table shows why
    it has no result; only in a directory no run has written to (another run's records are never touched)."""
    if not out_dir.is_dir() or has_records(out_dir) or (out_dir / LOCK_FILE).exists():
        return
    status, _ = _stop_reason(err)
    metrics = {"status": status, "output_dir": str(out_dir), "seed": cfg.get("seed")}
    metrics["duration_s"] = round(time.time() - started, 2)
    try:
        write_metrics_json(out_dir / "metrics.json", metrics)
    except OSError as write_error:  # the refusal itself is what the user must see
        log.warning("could not record the refused start in %s: %s", out_dir, write_error)


def _run_settings(cfg: DictConfig) -> dict:
    """The resolved options :func:`runkit.run_dir.plan_run` compares with a finished run's."""
    keys = ("model", "data", "trainer", "seed", "train", "test", "ckpt_path", "auto_resume")
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in keys
    }


def _check_checkpoint(cfg: DictConfig, resume_from: Optional[str], run_config: dict) -> None:
    """A checkpoint the user names is checked before anything is written: safe to load, not corrupt, and of
    this run's model (and, to resume, of this run's data and schedule)."""
    option = "ckpt_path" if cfg.get("ckpt_path") else None
    if cfg.train and resume_from:
        if not cfg.get("ckpt_path"):
            log.info("auto_resume: continuing from %s", resume_from)
        stored = stored_run_config(load_checkpoint(resume_from, option=option))
        check_resume_checkpoint(resume_from, stored, run_config, auto=not cfg.get("ckpt_path"))
    elif not cfg.train:
        stored = stored_run_config(load_checkpoint(cfg.ckpt_path, option=option))
        check_eval_checkpoint(cfg.ckpt_path, stored, run_config)


def _run(
    cfg: DictConfig,
    out_dir: Path,
    metrics: dict,
    objects: dict,
    guard: _SignalGuard,
    main_process: bool,
    run_config: dict,
    resume_from: Optional[str],
) -> None:
    config_path = (
        save_config(cfg, out_dir, print_tree=cfg.get("print_config", True) and main_process)
        if main_process
        else out_dir / "config_resolved.yaml"
    )
    L.seed_everything(cfg.seed, workers=True)
    identity = run_identity(cfg)
    configure_wandb(cfg, identity)

    log.info("data: %s", cfg.data._target_)
    datamodule: L.LightningDataModule = instantiate_named(cfg.data, "data")
    seed_training_order(datamodule, cfg.seed)
    log.info("model: %s", cfg.model._target_)
    model: L.LightningModule = instantiate_named(cfg.model, "model")
    model.build_config = run_config["model"]
    callbacks = instantiate_collection(cfg.get("callbacks"), "callbacks") + [RunStateCallback(run_config)]
    loggers = instantiate_collection(cfg.get("logger"), "logger")
    plugins = [AtomicCheckpointIO(), *cluster_plugins()]
    trainer: L.Trainer = build_trainer(cfg, callbacks, loggers, plugins)
    objects.update(trainer=trainer, model=model, datamodule=datamodule)

    params = model.parameter_counts()
    log.info("parameters: %s", params)
    metrics.update(
        {
            "config_path": str(config_path),
            "run_name": identity["name"],
            "run_group": identity["group"],
            "run_tags": identity["tags"],
            **params,
            **git_state(),
        }
    )
    if cfg.train and main_process and any(True for _ in model.trainable_parameters()):
        estimate = check_memory(
            model,
            (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size),
            int(cfg.data.batch_size),
            use_gpu=trainer.strategy.root_device.type == "cuda",
            processes=trainer.world_size,
            mode=cfg.get("memory_check", "error"),
        )
        if estimate is not None:
            metrics["memory_estimate"] = estimate
    start_wandb_runs(trainer)
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **params})

    test_ckpt = cfg.get("ckpt_path")
    if cfg.train and not any(True for _ in model.trainable_parameters()):
        # Nothing to fit (e.g. a zero-shot post-hoc wrapper): validate once, then test the model as built.
        log.info("the model has no trainable parameters: validating instead of fitting")
        results = trainer.validate(model, datamodule=datamodule)
        guard.raise_if_received()
        metrics.update(results[0] if results else {})
        metrics["val/acc_best"] = metrics.get("val/acc")
    elif cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
        guard.raise_if_received()
        train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        test_ckpt = selected_checkpoint(trainer)
        selection = selection_callback(trainer)
        best_score = getattr(selection, "best_model_score", None)
        metrics.update(train_metrics)
        metrics["val/acc_best"] = float(best_score) if best_score is not None else train_metrics.get("val/acc_best")
        if metrics["val/acc_best"] is None:
            log.warning(
                "the run ended before its first validation (max_steps/max_time reached first): nothing was "
                "selected, val/acc_best is null and the final weights are tested"
            )
        elif test_ckpt is None:
            log.warning("no best checkpoint was saved (fast_dev_run or checkpointing off): testing the final weights")
        metrics.update(best_checkpoint=test_ckpt, epochs_trained=trainer.current_epoch, global_step=trainer.global_step)
        last = out_dir / "checkpoints" / "last.ckpt"
        metrics["last_checkpoint"] = str(last) if last.is_file() else None
    if cfg.test:
        results = trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)
        guard.raise_if_received()
        metrics.update(results[0] if results else {})
        metrics["tested_checkpoint"] = test_ckpt
        robustness = next((c for c in callbacks if isinstance(c, RotationRobustnessCallback)), None)
        if robustness is not None and robustness.results is not None:
            metrics["rotation_robustness"] = robustness.results
    metrics["data_sizes"] = datamodule.describe() if hasattr(datamodule, "describe") else None
    update_wandb_summary(
        trainer, {k: v for k, v in metrics.items() if k.startswith("model/params") or k.endswith("images_per_s")}
    )


def build_trainer(cfg: DictConfig, callbacks: list, loggers: list, plugins: list) -> L.Trainer:
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)
    except InstantiationException as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        if isinstance(cause, (ValueError, TypeError)) or type(cause).__name__ == "MisconfigurationException":
            raise ConfigError(f"trainer: {cause}") from err
        raise


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    """Run; return ``optimized_metric`` to a sweeper, or None where the run could not compute it (an
    evaluate-only run, a run that ended before its first validation)."""
    metrics, _ = run(cfg)
    if is_launching_process():
        for line in run_summary(metrics):
            log.info(line)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = metrics.get(name)
    if value is None:
        if cfg.train:
            log.warning(
                "optimized_metric=%s was not computed (available: %s); returning nothing to the sweeper",
                name,
                sorted(k for k in metrics if "/" in k and metrics[k] is not None),
            )
        return None
    return float(value)


if __name__ == "__main__":
    main()
