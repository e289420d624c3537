"""How a run writes checkpoint files a preemptible cluster can trust: atomically, one every epoch, with the
run's random streams and config in each (reading any checkpoint safely is :mod:`runkit.checkpoint_loading`).

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin): every checkpoint Lightning writes goes
  to a temporary name in the same folder, is fsynced and renamed over the target, so a crash or a full disk
  never leaves a truncated ``.ckpt``; every checkpoint it reads goes through
  :func:`runkit.checkpoint_loading.load_checkpoint` (``weights_only=True``, one clear error per fault).
- :class:`LastCheckpoint`: writes ``last.ckpt`` at the end of every training epoch (whatever the monitored
  metric did) and, on a stop signal, makes sure the latest finished epoch is on disk.
- :class:`RunStateCallback`: stores the random streams (torch, CUDA, numpy, python) and the run's resolved
  config in every checkpoint, and restores the streams when a resumed run starts its next epoch.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from runkit.checkpoint_loading import load_checkpoint

log = logging.getLogger(__name__)

RUN_CONFIG_KEY = "gevit_run_config"
RNG_KEY = "gevit_rng_states"


# ---- writing --------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``<path>.tmp-<pid>`` in the same folder, fsync, rename over ``path``, fsync the folder.

    A crash at any moment leaves either the old file or the new one, never a truncated one; the temporary
    file of a failed write (e.g. a full disk) is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and safe reads."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        if weights_only is False:
            log.debug("weights_only=False requested for %s; loading with weights_only=True anyway", path)
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


# ---- random streams -------------------------------------------------------------------------------
def capture_rng_states() -> dict:
    """Every global random stream as tensors and plain lists (safe under ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"].cpu())
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


class RunStateCallback(L.Callback):
    """Stores ``run_config`` (plain dict: the model/data/schedule config of the run) and the random streams
    in every checkpoint; on resume, restores the streams at the start of the first resumed epoch, i.e. at
    the same point of the run where the uninterrupted run continues them (the sanity validation a resumed
    run does first cannot shift them)."""

    def __init__(self, run_config: dict):
        self.run_config = run_config
        self._pending: Optional[dict] = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.run_config
        checkpoint[RNG_KEY] = capture_rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get(RNG_KEY)
        if self._pending is None:
            log.warning(
                "the checkpoint holds no random-stream states (written by an older version): the resumed "
                "run continues with fresh streams and will not match an uninterrupted run exactly"
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            restore_rng_states(self._pending)
            self._pending = None


# ---- last.ckpt every epoch ------------------------------------------------------------------------
class LastCheckpoint(Checkpoint):
    """Write ``<dirpath>/last.ckpt`` at the end of every training epoch, after validation and after the
    early-stopping/selection callbacks updated their state, so it always holds the latest finished epoch.

    A stop signal (SIGTERM, SIGINT, a submitit requeue) that arrives between epochs writes it too when the
    latest finished epoch is not on disk yet. A signal in the middle of an epoch keeps the end-of-epoch file:
    a mid-epoch state cannot be resumed exactly (the data order and random streams of the rest of the epoch
    are not restorable), so the resumed run repeats that epoch from its start, identically.
    Runs with ``fast_dev_run`` write nothing."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self._saved_epochs = -1  # finished epochs that are on disk
        self._in_epoch = False

    @property
    def state_key(self) -> str:
        return f"LastCheckpoint{{'filename': '{self.path.name}'}}"

    def _finished_epochs(self, trainer) -> int:
        return trainer.fit_loop.epoch_progress.current.processed

    def _save(self, trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        # the full state (optimizer, loops, callbacks) is what exact resume needs; explicit, so Lightning's
        # per-epoch "weights_only was not set" log line stays out of the run's output
        trainer.save_checkpoint(str(self.path), weights_only=False)
        self._saved_epochs = self._finished_epochs(trainer)
        if trainer.is_global_zero:
            log.debug("wrote %s (epoch %d, step %d)", self.path, trainer.current_epoch, trainer.global_step)

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_epochs = self._finished_epochs(trainer)  # a resumed run's epochs are on disk already

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._in_epoch = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._in_epoch = False
        if self._epoch_cut_short(trainer):
            log.info(
                "training stopped inside epoch %d (max_steps/max_time): %s keeps the last finished epoch, which an "
                "extended run resumes from",
                trainer.current_epoch,
                self.path,
            )
            return
        self._save(trainer)

    @staticmethod
    def _epoch_cut_short(trainer) -> bool:
        """True when the epoch ending now was stopped early (``max_steps``, ``max_time``): saving it as finished
        would make a resumed run skip the rest of it."""
        expected = trainer.num_training_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return isinstance(expected, int) and 0 < done < expected

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SystemExit, KeyboardInterrupt)) or self._in_epoch:
            return
        if trainer.state.fn is None or trainer.state.fn.value != "fit" or trainer.world_size > 1:
            return  # (with several processes a save needs all of them; the end-of-epoch file stays)
        if self._finished_epochs(trainer) > self._saved_epochs:
            log.warning("stop signal between epochs: writing %s before exiting", self.path)
            self._save(trainer)


def selection_callback(trainer: L.Trainer):
    """The ModelCheckpoint that selects on validation (not the every-epoch ``last.ckpt`` writer)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def selected_checkpoint(trainer: L.Trainer) -> Optional[str]:
    callback = selection_callback(trainer)
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def fit_outcome(trainer: L.Trainer, out_dir: Path) -> dict:
    """What a finished fit leaves for ``metrics.json``: the metrics logged last, the validation score and
    checkpoint the selection kept (``val/acc_best``, ``best_checkpoint``: what the test phase reads), where
    training stopped and the every-epoch ``last.ckpt``. Says so when nothing was selected."""
    outcome = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = selected_checkpoint(trainer)
    score = getattr(selection_callback(trainer), "best_model_score", None)
    outcome["val/acc_best"] = float(score) if score is not None else outcome.get("val/acc_best")
    if outcome["val/acc_best"] is None:
        log.warning(
            "the run ended before its first validation (max_steps/max_time reached first): nothing was "
            "selected, val/acc_best is null and the final weights are tested"
        )
    elif best is None:
        log.warning("no best checkpoint was saved (fast_dev_run or checkpointing off): testing the final weights")
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    outcome.update(
        best_checkpoint=best,
        epochs_trained=trainer.current_epoch,
        global_step=trainer.global_step,
        last_checkpoint=str(last) if last.is_file() else None,
    )
    return outcome
