"""The run lifecycle around ``trainer.fit``: one process per run directory, a data order that is a function
of (seed, epoch), resuming only checkpoints of the same run, and a memory check before the first batch.

Plain helpers for train.py (no Hydra here: configs arrive as plain dicts).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler

log = logging.getLogger(__name__)


# ---- data order -------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``epoch`` of a run seeded with ``seed`` (distinct for every pair)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63)


class EpochSeededSampler(RandomSampler):
    """A random permutation of the data set that is a function of ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` before every training epoch, so a resumed run replays exactly the
    order the uninterrupted run used for the same epoch. ``self.generator`` (reseeded by ``set_epoch``) is
    also the DataLoader's, from which it draws the workers' base seed. Under DDP Lightning replaces it (it is a
    ``RandomSampler``) by a ``DistributedSampler`` seeded with the run seed, which is epoch-seeded as well.
    """

    def __init__(self, data_source, seed: int):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = int(seed)
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))

    def __iter__(self) -> Iterator[int]:
        # A generator of its own: Lightning may create the loader's iterator (which draws the workers' base
        # seed from self.generator) before or after set_epoch, depending on whether the run was resumed.
        order = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=order).tolist()


def with_epoch_seeded_order(loader: DataLoader, seed: int) -> DataLoader:
    """The same DataLoader, shuffled by an :class:`EpochSeededSampler` instead of a free-running one.

    Loaders that do not shuffle with a plain ``RandomSampler`` are returned unchanged (with a warning)."""
    if type(loader) is not DataLoader or type(loader.sampler) is not RandomSampler or loader.batch_sampler is None:
        if isinstance(loader, DataLoader) and isinstance(loader.sampler, EpochSeededSampler):
            return loader
        log.warning(
            "the training loader (%s, sampler %s) is not a plain shuffled DataLoader: its order is not "
            "seeded per epoch, so a resumed run may not replay it exactly",
            type(loader).__name__,
            type(getattr(loader, "sampler", None)).__name__,
        )
        return loader
    sampler = EpochSeededSampler(loader.dataset, seed)
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers > 0 else {}
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        generator=sampler.generator,
        **extra,
    )


def seed_training_order(datamodule, seed: int) -> None:
    """Make ``datamodule.train_dataloader()`` return loaders whose order is a function of (seed, epoch)."""
    build = datamodule.train_dataloader

    def train_dataloader():
        return with_epoch_seeded_order(build(), seed)

    train_dataloader.__doc__ = build.__doc__
    datamodule.train_dataloader = train_dataloader


# ---- one run per directory --------------------------------------------------------------------------
class RunDirLockedError(RuntimeError):
    """Another live process is running in this run directory."""


def is_launching_process() -> bool:
    """True in the process that owns the run (rank 0 of the first node); False in the DDP processes
    Lightning or Slurm start beside it (they share the run, not the lock)."""
    for name in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "RANK"):
        value = os.environ.get(name)
        if value not in (None, "", "0"):
            return False
    return True


def current_job_id() -> Optional[str]:
    """The scheduler's id of this job (kept by a requeue), if any."""
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(name):
            job = os.environ[name]
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"{job}_{task}" if name == "SLURM_ARRAY_JOB_ID" and task else job
    return None


def pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``<run_dir>/run.lock``: pid, host and job id of the process running there.

    :meth:`acquire` fails at once with :class:`RunDirLockedError` when a live process holds the directory;
    a lock left by a dead process on this host, or by an earlier attempt of the same scheduler job (a
    requeue), is taken over with a warning. :meth:`release` removes it (only if it is still ours)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "run.lock"
        self.owned = False

    def _mine(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job_id": current_job_id(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _read(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other == {}:
                    continue  # removed in between: try again
                if other is None:  # being written right now, or garbage
                    if attempt < 10:
                        time.sleep(0.05)
                        continue
                    other = {}
                self._judge(other)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._mine(), f)
            self.owned = True
            return
        raise RunDirLockedError(f"could not take the lock {self.path}")

    def _judge(self, other: dict) -> None:
        """Raise if ``other`` is a live process; else remove its lock (the caller retries)."""
        pid, host, job = other.get("pid"), other.get("host"), other.get("job_id")
        here, mine = socket.gethostname(), current_job_id()
        who = f"process {pid} on {host}" + (f" (job {job})" if job else "") + f", started {other.get('started', '?')}"
        if job and mine and job == mine:
            log.warning(
                "run dir %s: taking over the lock of an earlier attempt of job %s (%s): a requeue",
                self.path.parent,
                job,
                who,
            )
        elif host == here and isinstance(pid, int) and pid_is_alive(pid) and pid != os.getpid():
            raise RunDirLockedError(
                f"run dir {self.path.parent} is in use by {who}. Two runs in one directory would mix their "
                f"checkpoints and logs: wait for it, stop it, or give this run another directory "
                f"(hydra.run.dir=...)"
            )
        elif host != here and host is not None:
            raise RunDirLockedError(
                f"run dir {self.path.parent} is locked by {who}, which cannot be checked from {here}. If that "
                f"process is gone, delete {self.path} and run again; else give this run another directory"
            )
        else:
            log.warning(
                "run dir %s: taking over a stale lock left by %s, which is no longer running", self.path.parent, who
            )
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if not self.owned:
            return
        other = self._read()
        if other and other.get("pid") == os.getpid():
            try:
                self.path.unlink()
            except OSError:
                pass
        self.owned = False


# ---- what a checkpoint belongs to -------------------------------------------------------------------
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
    from runkit.checkpointing import RUN_CONFIG_KEY
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
            + "; ".join(f"{k}: {_show(a)} in the checkpoint, {_show(b)} now" for k, a, b in diffs)
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
    listed = "; ".join(f"{k}: {_show(a)} in the checkpoint, {_show(b)} now" for k, a, b in diffs)
    optimiser = any(k.startswith(("model.optimizer", "model.scheduler")) for k, _, _ in diffs)
    note = (
        " (a resumed optimiser continues with the state it saved, so changed optimiser settings cannot be "
        "applied to it)"
        if optimiser
        else ""
    )
    if auto:
        ways = (
            "Either start this directory afresh with auto_resume=false (its checkpoints are overwritten), "
            "or give the new run its own directory (hydra.run.dir=...)"
        )
    else:
        ways = "Resume with the checkpoint's settings, or drop ckpt_path= to train from scratch"
    raise CheckpointMismatchError(
        f"cannot resume from {path}: it belongs to a run with other settings{note}: {listed}. {ways}"
    )


# ---- memory -----------------------------------------------------------------------------------------
class MemoryEstimateError(RuntimeError):
    """The configured batch would not fit into the machine's memory."""


def estimate_training_bytes(model: torch.nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """``(bytes per training sample, fixed bytes)`` of a training step, from one forward pass of 2 images.

    Per sample: every tensor autograd saves for the backward pass (parameters excluded, shared storage
    counted once). Fixed: parameters x 4 (weights, gradients and two Adam moments). Random streams and
    buffers (e.g. BatchNorm statistics) are left as they were."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model.train()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model(torch.rand(2, *input_shape, device=device))  # 2: BatchNorm needs more than 1
            seen[-1] = out.numel() * out.element_size()
            del out
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    fixed = 4 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return math.ceil(sum(seen.values()) / 2), fixed


def available_bytes(use_gpu: bool) -> Optional[int]:
    """Free memory of the device training will run on (GPU free memory, else the host's MemAvailable)."""
    if use_gpu and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(
    model,
    input_shape: Sequence[int],
    batch_size: int,
    use_gpu: bool,
    processes: int = 1,
    mode: str = "error",
    available: Optional[int] = None,
) -> Optional[dict]:
    """Estimate a training step's memory and compare it with the machine's; ``mode``: error, warn or off.

    Returns the estimate (for metrics.json) or None when skipped."""
    if mode == "off":
        return None
    if mode not in ("error", "warn"):
        raise ValueError(f"memory_check={mode!r}: expected one of error, warn, off")
    try:
        per_sample, fixed = estimate_training_bytes(model, input_shape)
    except Exception as err:  # the estimate is a courtesy: a model it cannot run is left to the real first step
        log.warning("memory estimate skipped: a test forward pass failed (%s: %s)", type(err).__name__, err)
        return None
    share = 1 if use_gpu else max(1, processes)  # CPU processes share the host's memory
    needed = share * (fixed + batch_size * per_sample)
    available = available if available is not None else available_bytes(use_gpu)
    estimate = {
        "per_sample_bytes": per_sample,
        "fixed_bytes": fixed,
        "batch_size": batch_size,
        "needed_bytes": needed,
        "available_bytes": available,
    }
    if available is None or needed <= 0.9 * available:
        return estimate
    fits = math.floor((0.9 * available / share - fixed) / per_sample) if per_sample else batch_size
    gib = 2**30
    where = "GPU" if use_gpu else "host"
    message = (
        f"a training step of this model needs about {needed / gib:.1f} GiB for data.batch_size={batch_size} "
        f"({per_sample / 2**20:.1f} MiB of activations per image, estimated from one forward pass), "
        f"but only {available / gib:.1f} GiB of {where} memory is available; "
        + (f"data.batch_size={fits} would fit" if fits >= 1 else "even data.batch_size=1 would not fit")
        + ". Set memory_check=warn to run anyway"
    )
    if mode == "error":
        raise MemoryEstimateError(message)
    log.warning(message)
    return estimate
