"""Train, select on validation, test once, measure rotation robustness.

    python train.py                                   # ViT on the embedded RotMNIST-style set, offline
    python train.py data=rotmnist data.data_dir=DIR   # the real benchmark
    python train.py experiment=vit_pcam logger=wandb
    python train.py train=false ckpt_path=RUN/checkpoints/best-....ckpt   # evaluate a checkpoint
    python train.py ckpt_path=RUN/checkpoints/last.ckpt hydra.run.dir=RUN   # resume an interrupted run

Everything is built from conf/ with ``hydra.utils.instantiate``; every run writes its checkpoints,
``metrics.json``, ``rotation_robustness.{csv,png}`` and resolved config into its output directory.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.callbacks import RotationRobustnessCallback
from lightning_modules.utils import (git_state, instantiate_collection, register_resolvers, run_identity,
                                     save_config, write_metrics_json)

log = logging.getLogger("train")
register_resolvers()


def output_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def resume_checkpoint(cfg: DictConfig) -> Optional[str]:
    """``ckpt_path`` if given; else, with ``auto_resume``, this run directory's own ``last.ckpt``."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
        return str(path)
    last = (output_dir_of(cfg) / "checkpoints" / "last.ckpt").absolute()
    if cfg.get("auto_resume") and last.is_file():
        log.info("auto_resume: continuing from %s", last)
        return str(last)
    return None


def cluster_plugins() -> list:
    """Exactly one of submitit and Lightning requeues a preempted or timed-out Slurm job.

    Under submitit (``hydra/launcher=slurm``) submitit does: it catches USR2, pickles the job and requeues
    it, and the requeued job resumes from its own ``last.ckpt`` (``auto_resume``). Lightning's own
    requeue (on USR1) is then switched off. Under a plain ``sbatch`` Lightning keeps its default."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def configure_wandb(cfg: DictConfig, identity: dict) -> None:
    """Fill the W&B logger's empty name/group and extend its tags with the run's identity."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return
    with open_dict(node):
        node.name = node.get("name") or identity["name"]
        node.group = node.get("group") or identity["group"]
        node.tags = list(dict.fromkeys([*(node.get("tags") or []), *identity["tags"]]))


def update_wandb_summary(trainer: L.Trainer, values: dict) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update({k: v for k, v in values.items() if isinstance(v, (int, float))})


def selected_checkpoint(trainer: L.Trainer) -> Optional[str]:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def run(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one configured job; returns (metrics, objects) where objects holds the trainer, model and
    data module for callers that want to inspect them (tests, notebooks)."""
    if not cfg.train and not cfg.test:
        raise ValueError("train=false and test=false: nothing to do")
    if not cfg.train and not cfg.get("ckpt_path"):
        raise ValueError("train=false needs ckpt_path=FILE (the checkpoint to evaluate)")
    started = time.time()
    out_dir = output_dir_of(cfg)
    config_path = save_config(cfg, out_dir, print_tree=cfg.get("print_config", True))
    L.seed_everything(cfg.seed, workers=True)
    identity = run_identity(cfg)
    configure_wandb(cfg, identity)

    log.info("data: %s", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info("model: %s", cfg.model._target_)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    model.build_config = OmegaConf.to_container(cfg.model, resolve=True)
    callbacks = instantiate_collection(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_collection(cfg.get("logger"), "logger")
    plugins = cluster_plugins()
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                                                 **({"plugins": plugins} if plugins else {}))

    params = model.parameter_counts()
    log.info("parameters: %s", params)
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **params})

    metrics: dict = {"status": "started", "output_dir": str(out_dir), "config_path": str(config_path),
                     "seed": cfg.seed, "run_name": identity["name"], "run_group": identity["group"],
                     "run_tags": identity["tags"], **params, **git_state()}
    objects = {"trainer": trainer, "model": model, "datamodule": datamodule}
    try:
        test_ckpt = cfg.get("ckpt_path")
        if cfg.train and not any(True for _ in model.trainable_parameters()):
            # Nothing to fit (e.g. a zero-shot post-hoc wrapper): validate once, then test the model as built.
            log.info("the model has no trainable parameters: validating instead of fitting")
            results = trainer.validate(model, datamodule=datamodule)
            metrics.update(results[0] if results else {})
            metrics["val/acc_best"] = metrics.get("val/acc")
        elif cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg))
            train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            test_ckpt = selected_checkpoint(trainer)
            if test_ckpt is None:
                log.warning("no best checkpoint was saved (fast_dev_run or checkpointing off): "
                            "testing the final weights")
            best_score = getattr(trainer.checkpoint_callback, "best_model_score", None)
            metrics.update(train_metrics)
            metrics["val/acc_best"] = float(best_score) if best_score is not None else train_metrics.get("val/acc_best")
            metrics.update(best_checkpoint=test_ckpt, epochs_trained=trainer.current_epoch,
                           global_step=trainer.global_step)
            last = out_dir / "checkpoints" / "last.ckpt"
            metrics["last_checkpoint"] = str(last) if last.is_file() else None
        if cfg.test:
            results = trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=False)
            metrics.update(results[0] if results else {})
            metrics["tested_checkpoint"] = test_ckpt
            robustness = next((c for c in callbacks if isinstance(c, RotationRobustnessCallback)), None)
            if robustness is not None and robustness.results is not None:
                metrics["rotation_robustness"] = robustness.results
        metrics["data_sizes"] = datamodule.describe() if hasattr(datamodule, "describe") else None
        metrics["status"] = "completed"
        update_wandb_summary(trainer, {k: v for k, v in metrics.items()
                                       if k.startswith("model/params") or k.endswith("images_per_s")})
    except BaseException as err:
        # SystemExit: submitit requeues a preempted job by exiting; the requeued job overwrites this file.
        kind = "interrupted" if isinstance(err, (SystemExit, KeyboardInterrupt)) else "failed"
        metrics["status"] = f"{kind}: {type(err).__name__}: {err}"
        raise
    finally:
        metrics["duration_s"] = round(time.time() - started, 2)
        if trainer.is_global_zero:
            write_metrics_json(out_dir / "metrics.json", metrics)
        finish_wandb()
    return metrics, objects


def finish_wandb() -> None:
    """Close the W&B run (if any) so the next job of a multirun starts a fresh one."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    metrics, _ = run(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not computed; available: {sorted(k for k in metrics if '/' in k)}")
    return float(metrics[name])


if __name__ == "__main__":
    main()
