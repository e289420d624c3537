"""What a checkpoint belongs to: the part of a resolved config that defines a run (model, data, seed, the
schedule options that change what a checkpoint means), and the checks that a checkpoint is resumed or evaluated
only by a run it belongs to. Plain dicts, no Hydra."""

from __future__ import annotations

import json
import logging
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from runkit.checkpoint_loading import load_checkpoint

log = logging.getLogger(__name__)


# Schedule options that change what a checkpoint means: debug runs (fast_dev_run, overfit, limit) and
# real runs never resume each other's checkpoints. max_epochs/max_steps are not here: extending a run is
# a resume.
SCHEDULE_KEYS = (
    "fast_dev_run",
    "overfit_batches",
    "limit_train_batches",
    "limit_val_batches",
    "accumulate_grad_batches",
    "precision",
    "gradient_clip_val",
    "check_val_every_n_epoch",
    "val_check_interval",
)
# Data options that do not change the data a model sees (where it is read from, how fast).
IGNORED_DATA_KEYS = ("data_dir", "num_workers", "pin_memory", "download", "eval_batch_size", "persistent_workers")


def build_run_config(model: dict, data: dict, trainer: dict, seed: Any, choices: dict) -> dict:
    """The part of a resolved config that defines a run's checkpoints (plain containers)."""
    return {
        "model": model,
        "data": {k: v for k, v in data.items() if k not in IGNORED_DATA_KEYS},
        "trainer": {k: trainer.get(k) for k in SCHEDULE_KEYS},
        "seed": seed,
        "choices": {k: v for k, v in choices.items() if k in ("model", "data", "debug", "experiment")},
    }


def flatten(value: Any, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


_MISSING = "<absent>"


def config_differences(stored: dict, current: dict, sections: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, current value)`` for every differing leaf of ``sections``."""
    diffs = []
    for section in sections:
        a, b = flatten(stored.get(section), section), flatten(current.get(section), section)
        for key in sorted(set(a) | set(b)):
            if a.get(key, _MISSING) != b.get(key, _MISSING):
                diffs.append((key, a.get(key, _MISSING), b.get(key, _MISSING)))
    return diffs


class CheckpointMismatchError(RuntimeError):
    """The checkpoint belongs to another run (model, data, seed or schedule differ)."""


def _targets(model_cfg: Optional[dict]) -> list[str]:
    return [
        str(v)
        for k, v in flatten(model_cfg or {}).items()
        if k.endswith("_target_") and not any(part in k for part in ("optimizer", "scheduler"))
    ]


def describe_model(run_cfg: dict) -> str:
    choice = (run_cfg.get("choices") or {}).get("model")
    targets = _targets(run_cfg.get("model"))
    what = " / ".join(t.rsplit(".", 1)[-1] for t in targets) or "unknown"
    return f"{what} (model={choice})" if choice else what


def stored_run_config(checkpoint: dict) -> Optional[dict]:
    from runkit.checkpoint_writing import RUN_CONFIG_KEY
    from runkit.legacy import upgrade_model_config

    stored = checkpoint.get(RUN_CONFIG_KEY)
    if stored is None and checkpoint.get("gevit_model_config") is not None:  # older checkpoints: model only
        stored = {"model": checkpoint["gevit_model_config"]}
    if stored and isinstance(stored.get("model"), dict):  # configs of earlier versions in today's form
        stored = {**stored, "model": upgrade_model_config(stored["model"])[0]}
    return stored


def check_same_model_family(path: str, stored: Optional[dict], current: dict) -> None:
    """Fail with the ``model=`` override when the checkpoint holds another kind of network."""
    if not stored or not stored.get("model"):
        return
    if _targets(stored["model"]) != _targets(current["model"]):
        choice = (stored.get("choices") or {}).get("model")
        how = (f"add model={choice}" if choice else "use the model config it was trained with") + (
            f" (and data={stored['choices']['data']})"
            if (stored.get("choices") or {}).get("data")
            and stored["choices"]["data"] != (current.get("choices") or {}).get("data")
            else ""
        )
        raise CheckpointMismatchError(
            f"checkpoint {path} holds a {describe_model(stored)} network, but this run builds "
            f"{describe_model(current)}: {how} to load it"
        )


def _show(value: Any) -> str:
    return "absent" if value is _MISSING else json.dumps(value) if not isinstance(value, str) else value


def describe_difference(key: str, stored: Any, current: Any, where: str = "in the checkpoint") -> str:
    """``key: <stored> <where>, <current> now`` (absent values named as such)."""
    return f"{key}: {_show(stored)} {where}, {_show(current)} now"


def check_eval_checkpoint(path: str, stored: Optional[dict], current: dict) -> None:
    """Evaluating: the network must be built exactly as the checkpoint's (optimiser settings do not matter)."""
    check_same_model_family(path, stored, current)
    if not stored:
        return
    diffs = [
        d
        for d in config_differences(stored, current, ["model"])
        if not d[0].startswith(("model.optimizer", "model.scheduler", "model.label_smoothing"))
    ]
    # An option the checkpoint's config does not hold did not exist when it was written (an earlier
    # version): the weights still load strictly, so only say which options it is evaluated with.
    newer = [d for d in diffs if d[1] is _MISSING]
    if newer:
        log.warning(
            "checkpoint %s predates the options %s; evaluating it with today's values",
            path,
            ", ".join(f"{k}={_show(b)}" for k, _, b in newer),
        )
    diffs = [d for d in diffs if d[1] is not _MISSING]
    if diffs:
        overrides = " ".join(f"{k}={_show(a)}" for k, a, _ in diffs if a is not _MISSING)
        raise CheckpointMismatchError(
            f"checkpoint {path} was trained with other model settings: "
            + "; ".join(describe_difference(k, a, b) for k, a, b in diffs)
            + (f". Add {overrides} to evaluate it" if overrides else "")
        )


def check_resume_checkpoint(path: str, stored: Optional[dict], current: dict, auto: bool) -> None:
    """Resuming: model, data, seed and schedule must be those of the run that wrote the checkpoint."""
    check_same_model_family(path, stored, current)
    if not stored or "data" not in stored:
        log.warning(
            "checkpoint %s does not record its run config (an older version wrote it): resuming "
            "without checking that it belongs to this run",
            path,
        )
        return
    diffs = config_differences(stored, current, ["model", "data", "trainer", "seed"])
    if stored.get("choices", {}).get("debug") != current.get("choices", {}).get("debug"):
        diffs.append(("debug", stored.get("choices", {}).get("debug"), current.get("choices", {}).get("debug")))
    if not diffs:
        return
    listed = "; ".join(describe_difference(k, a, b) for k, a, b in diffs)
    optimiser = any(k.startswith(("model.optimizer", "model.scheduler")) for k, _, _ in diffs)
    note = (
        " (a resumed optimiser continues with the state it saved, so changed optimiser settings cannot be "
        "applied to it)"
        if optimiser
        else ""
    )
    if auto:
        ways = (
            "Either start this directory afresh with auto_resume=false (its records are set aside, not deleted), "
            "or give the new run its own directory (hydra.run.dir=...)"
        )
    else:
        ways = "Resume with the checkpoint's settings, or drop ckpt_path= to train from scratch"
    raise CheckpointMismatchError(
        f"cannot resume from {path}: it belongs to a run with other settings{note}: {listed}. {ways}"
    )


def check_run_checkpoint(cfg: DictConfig, resume_from: Optional[str], run_config: dict) -> None:
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
