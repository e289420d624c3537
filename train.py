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
import time
from pathlib import Path
from typing import Optional

import gevit.openmp  # noqa: F401  # isort: skip  (before lightning imports torch: OpenMP wait policy)
import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from runkit.callbacks import RotationRobustnessCallback, run_summary, seconds_before_resume
from runkit.checkpoint_writing import AtomicCheckpointIO, RunStateCallback, fit_outcome
from runkit.config import build_trainer, config_choices, instantiate_collection, instantiate_named, save_config
from runkit.config_validation import check_before_running
from runkit.data_order import seed_training_order
from runkit.memory import check_run_memory
from runkit.naming import run_identity
from runkit.provenance import git_state, write_metrics_json
from runkit.resolvers import register_resolvers
from runkit.run_config import build_run_config, check_run_checkpoint
from runkit.run_dir import done_message, plan_run, record_refused_start, run_settings
from runkit.run_lock import RunLock, is_launching_process, quiet_secondary_process
from runkit.slurm import cluster_plugins
from runkit.stopping import SignalGuard, stop_reason
from runkit.sweeps import sweeper_value
from runkit.wandb_logging import configure_wandb, finish_wandb, start_wandb_runs, update_wandb_summary

log = logging.getLogger("train")
register_resolvers()


def output_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def run(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one configured job; returns (metrics, objects) where objects holds the trainer, model and
    data module for callers that want to inspect them (tests, notebooks)."""
    started = time.time()
    out_dir = output_dir_of(cfg)
    main_process = is_launching_process()
    try:
        check_before_running(cfg)
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
        with SignalGuard() as guard:
            if main_process:
                lock.acquire()
            plan = plan_run(out_dir, run_settings(cfg), owner=main_process)
            if plan.action == "done":
                log.info(done_message(out_dir, plan.finished or {}))
                return plan.finished or {}, objects
            check_run_checkpoint(cfg, plan.resume_from, run_config)
            recording = True
            _run(cfg, out_dir, metrics, objects, guard, main_process, run_config, plan.resume_from)
        metrics["status"] = "completed"
    except BaseException as err:
        metrics["status"], exit_code = stop_reason(err)
        if exit_code is not None:
            raise SystemExit(exit_code) from err
        raise
    finally:
        metrics["duration_s"] = round(time.time() - started, 2)  # this segment; run_duration_s: the whole run
        trainer = objects.get("trainer")
        metrics["run_duration_s"] = round(metrics["duration_s"] + seconds_before_resume(trainer), 2)
        if recording and (trainer.is_global_zero if trainer is not None else main_process):
            write_metrics_json(out_dir / "metrics.json", metrics)
        finish_wandb()
        lock.release()
    return metrics, objects


def _run(
    cfg: DictConfig,
    out_dir: Path,
    metrics: dict,
    objects: dict,
    guard: SignalGuard,
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
    estimate = check_run_memory(cfg, model, trainer) if main_process else None
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
        metrics.update(fit_outcome(trainer, out_dir))
        test_ckpt = metrics["best_checkpoint"]
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


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    """Run; return ``optimized_metric`` to a sweeper, or None where the run could not compute it (an
    evaluate-only run, a run that ended before its first validation)."""
    metrics, _ = run(cfg)
    if is_launching_process():
        for line in run_summary(metrics):
            log.info(line)
    return sweeper_value(cfg, metrics)


if __name__ == "__main__":
    main()
