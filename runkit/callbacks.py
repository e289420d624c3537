"""Callbacks of the training pipeline: rotation robustness at test time, plain epoch summaries, throughput,
and a rehearsal of Slurm preemption."""

from __future__ import annotations

import csv
import logging
import os
import signal
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from lightning.pytorch.callbacks import Callback

from gevit.robustness import RotationRobustness, default_angles
from runkit.plots import plot_rotation_robustness
from runkit.wandb_logging import log_rotation_robustness

log = logging.getLogger(__name__)


class RotationRobustnessCallback(Callback):
    """During ``trainer.test`` — which runs once, on the selected checkpoint — also evaluate the model on
    the same test batches rotated by every angle in ``angles`` (default every ``step_deg`` degrees).

    Only the first ``max_samples`` test images are used, so the cost is bounded; under several processes,
    each evaluating every W-th image (``datamodules.base.EvaluationShardSampler``), process ``r`` takes those of
    its images that are among the first ``max_samples``, so the result is that of one process. It follows
    ``trainer.limit_test_batches`` because it sees exactly the batches the test loop sees.
    At the end of the test epoch it writes ``rotation_robustness.csv`` (angle, accuracy,
    invariance_error, num_samples) and ``rotation_robustness.png`` into ``output_dir``, logs
    ``test/rot_acc_mean``, ``test/rot_acc_min`` and ``test/invariance_error_rot90`` to every logger,
    and a table + line plot to W&B when a ``WandbLogger`` is attached. ``self.results`` keeps the dict. A
    model with an ``invariance_group`` (the post-hoc wrappers) also gets ``test/group_acc`` and
    ``test/acc_group_element_i``: the accuracy on the test images transformed by each element of that group
    (:class:`~gevit.robustness.RotationRobustness`).

    The figure names this run ``label`` (default: the network's class name) and, given ``reference`` (a
    ``rotation_robustness.csv`` of an earlier run, e.g. the committed plain-ViT curve), draws that curve
    beside it as ``reference_label``. The reference file is read when the callback is built, before any
    training, so a missing or malformed file is one clear error that costs no run.
    """

    def __init__(
        self,
        output_dir: Optional[str] = None,
        angles: Optional[Sequence[float]] = None,
        step_deg: float = 15.0,
        max_samples: Optional[int] = 2000,
        interpolation: str = "bilinear",
        padding_mode: str = "zeros",
        enabled: bool = True,
        label: Optional[str] = None,
        reference: Optional[str] = None,
        reference_label: Optional[str] = None,
    ):
        if angles is None and not (isinstance(step_deg, (int, float)) and 0 < step_deg <= 360):
            raise ValueError(f"step_deg={step_deg!r}: expected a number of degrees in (0, 360]")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples={max_samples!r}: expected a positive number or null (all test images)")
        self.output_dir = Path(output_dir) if output_dir else None
        self.requested_angles = [float(a) for a in angles] if angles is not None else default_angles(step_deg)
        self.max_samples = max_samples
        self.enabled = enabled
        self.meter = RotationRobustness(self.requested_angles, interpolation=interpolation, padding_mode=padding_mode)
        self.results: Optional[dict] = None
        self._seen = 0
        self._budget: Optional[int] = max_samples
        self.label = label
        self.reference = read_rotation_robustness_csv(reference) if reference else None
        self.reference_label = reference_label or (Path(reference).stem if reference else None)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        # a model that names the group it is invariant to (post-hoc wrappers) also gets its per-element accuracy
        group = getattr(pl_module, "invariance_group", None)
        if group is not self.meter.group:
            self.meter = RotationRobustness(
                self.requested_angles, self.meter.interpolation, self.meter.padding_mode, group=group
            )
        self.meter.reset()
        self._seen = 0
        self.results = None
        # this process's share of the first max_samples images when images are dealt out round-robin
        self._budget = (
            None
            if self.max_samples is None
            else len(range(trainer.global_rank, self.max_samples, max(1, trainer.world_size)))
        )

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.enabled or (self._budget is not None and self._seen >= self._budget):
            return
        images, targets = batch[0], batch[1]
        if self._budget is not None:
            images, targets = images[: self._budget - self._seen], targets[: self._budget - self._seen]
        self.meter.update(pl_module, images, targets)
        self._seen += len(targets)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        state = self.meter.state_tensor().to(pl_module.device)
        state = trainer.strategy.reduce(state, reduce_op="sum")
        self.meter.load_state_tensor(state)
        if int(self.meter.count) == 0:
            log.warning("rotation robustness: no test samples were evaluated")
            return
        self.results = self.meter.result(self.requested_angles)
        pl_module.log("test/rot_acc_mean", self.results["acc_mean"], rank_zero_only=True)
        pl_module.log("test/rot_acc_min", self.results["acc_min"], rank_zero_only=True)
        pl_module.log("test/invariance_error_rot90", self.results["invariance_error_rot90"], rank_zero_only=True)
        if "group_acc" in self.results:
            pl_module.log("test/group_acc", self.results["group_acc"], rank_zero_only=True)
            for i, accuracy in enumerate(self.results["group_element_accuracy"]):
                pl_module.log(f"test/acc_group_element_{i}", accuracy, rank_zero_only=True)
        if self.label is None:
            self.label = type(getattr(pl_module, "net", pl_module)).__name__
        if trainer.is_global_zero:
            self._write_files()
            log_rotation_robustness(trainer, self.results)
        log.info(
            "rotation robustness on %d test images: mean acc %.4f, min acc %.4f, rot90 invariance error %.2e",
            self.results["num_samples"],
            self.results["acc_mean"],
            self.results["acc_min"],
            self.results["invariance_error_rot90"],
        )

    # ---- outputs --------------------------------------------------------------------------------
    def _write_files(self) -> None:
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        r = self.results
        with open(self.output_dir / "rotation_robustness.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["angle_deg", "accuracy", "invariance_error", "num_samples"])
            for angle, acc, err in zip(r["angles"], r["accuracy"], r["invariance_error"]):
                writer.writerow([f"{angle:g}", f"{acc:.6f}", f"{err:.6e}", r["num_samples"]])
        curves = {self.label or "model": r}
        if self.reference is not None:
            curves[self.reference_label] = self.reference
        plot_rotation_robustness(curves, self.output_dir / "rotation_robustness.png")


def read_rotation_robustness_csv(path) -> dict:
    """A ``rotation_robustness.csv`` (as written by :class:`RotationRobustnessCallback`) -> ``{"angles",
    "accuracy", "invariance_error"}`` lists; a missing file is a FileNotFoundError, a malformed one a
    ValueError, each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rotation robustness reference {path}: no such file")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        curve = {
            "angles": [float(r["angle_deg"]) for r in rows],
            "accuracy": [float(r["accuracy"]) for r in rows],
            "invariance_error": [float(r["invariance_error"]) for r in rows],
        }
    except (KeyError, TypeError, ValueError, csv.Error) as err:
        raise ValueError(
            f"rotation robustness reference {path}: expected the columns angle_deg, accuracy, "
            f"invariance_error of a rotation_robustness.csv ({type(err).__name__}: {err})"
        ) from err
    if not rows:
        raise ValueError(f"rotation robustness reference {path}: no rows")
    return curve


def run_summary(metrics: dict) -> list[str]:
    """The three lines a run ends with: best validation accuracy, test accuracy, rot90 invariance error
    (``n/a`` for what this run did not compute, e.g. an evaluate-only run has no validation)."""

    def pct(key):
        value = metrics.get(key)
        return f"{100 * float(value):.2f} %" if value is not None else "n/a"

    error = metrics.get("test/invariance_error_rot90")
    return [
        f"val acc (best):          {pct('val/acc_best')}",
        f"test acc:                {pct('test/acc')}",
        "rot90 invariance error:  " + (f"{float(error):.2e}" if error is not None else "n/a"),
    ]


class EpochSummary(Callback):
    """One plain log line per epoch (readable in Slurm logs where there is no progress bar), and the
    learning rate logged as ``train/lr``: the rate the epoch started with (a per-step schedule moves it within
    the epoch; W&B's step axis shows the schedule, this is one number per epoch)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.optimizers:
            pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Runs after this epoch's validation, so train/ and val/ metrics belong to the same epoch.
        # Every process reads callback_metrics (under DDP reading them synchronises the metrics, a collective
        # call); only rank 0 prints.
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        if not trainer.is_global_zero or not metrics:  # e.g. the end of an epoch a resumed run had already finished
            return
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
        log.info("epoch %d/%s (step %d): %s", trainer.current_epoch + 1, trainer.max_epochs, trainer.global_step, shown)


class ThroughputMonitor(Callback):
    """Images per second, logged as ``train/images_per_s`` (each training epoch, validation time
    excluded: forward, backward and optimiser step, data loading included) and ``test/images_per_s``
    (the test pass, rotation-robustness work included). Summed over DDP processes."""

    def __init__(self):
        self._count = 0
        self._started = 0.0
        self._paused = 0.0
        self._validation_started: Optional[float] = None

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # kernels are asynchronous; time what finished
        return time.perf_counter()

    def _start(self, pl_module) -> None:
        self._count, self._paused, self._started = 0, 0.0, self._now(pl_module)

    def _rate(self, trainer, pl_module) -> Optional[float]:
        elapsed = self._now(pl_module) - self._started - self._paused
        return self._count * trainer.world_size / elapsed if self._count and elapsed > 0 else None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count += len(batch[0])

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training:
            self._validation_started = self._now(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._validation_started is not None:
            self._paused += self._now(pl_module) - self._validation_started
            self._validation_started = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        rate = self._rate(trainer, pl_module)
        if rate is not None:
            pl_module.log("train/images_per_s", rate, on_step=False, on_epoch=True, rank_zero_only=True)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count += len(batch[0])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        rate = self._rate(trainer, pl_module)
        if rate is not None:
            pl_module.log("test/images_per_s", rate, rank_zero_only=True)


class TrainingClock(Callback):
    """Logs ``time/elapsed_s`` at the end of every training epoch (after its validation): the wall time of
    training so far, validation included, summed over the segments of a resumed run (the total is kept in
    the checkpoint). Validation accuracy can then be drawn against wall time as well as against epochs
    (the leaderboard's learning curves, a W&B chart with ``time/elapsed_s`` as its x-axis)."""

    def __init__(self):
        self._before = 0.0  # seconds trained by the segments this run resumed from
        self._started: Optional[float] = None
        self._resumed = 0.0  # _before when training started (testing a checkpoint loads its clock again)

    def elapsed(self) -> float:
        return self._before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._resumed = time.perf_counter(), self._before

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("time/elapsed_s", self.elapsed(), on_step=False, on_epoch=True, rank_zero_only=True)

    @property
    def resumed_s(self) -> float:
        """Seconds of training (validation included) done by the earlier segments of a resumed run."""
        return self._resumed

    def state_dict(self) -> dict:
        return {"elapsed_s": self.elapsed()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._before, self._started = float(state_dict.get("elapsed_s", 0.0)), None


def seconds_before_resume(trainer) -> float:
    """What a resumed run had trained before this segment (its TrainingClock's total at the checkpoint; 0 for a
    fresh run or without the clock): added to this segment's duration, the run's whole wall time (less what a
    kill lost after its last checkpoint)."""
    clocks = [c for c in getattr(trainer, "callbacks", None) or [] if isinstance(c, TrainingClock)]
    return clocks[0].resumed_s if clocks else 0.0


class SimulatedPreemption(Callback):
    """Send this process ``signal`` (default USR2, what submitit's Slurm jobs receive before their time
    limit) once, at the start of training epoch ``at_epoch``: a rehearsal of preemption/timeout with
    the local submitit launcher (``debug=preempt``). The job should be checkpointed by submitit,
    requeued, and resume from its own ``last.ckpt``. A marker file in ``output_dir`` makes it fire only
    once per run directory, so the requeued job runs to the end."""

    def __init__(self, output_dir: str, at_epoch: int = 1, signal_name: str = "USR2"):
        self.marker = Path(output_dir) / "simulated_preemption.done"
        self.at_epoch = at_epoch
        self.signum = getattr(signal, f"SIG{signal_name.upper().removeprefix('SIG')}")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch < self.at_epoch or self.marker.exists() or not trainer.is_global_zero:
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"signal {self.signum.name} sent at epoch {trainer.current_epoch}\n")
        log.warning("simulated preemption: sending %s to process %d", self.signum.name, os.getpid())
        os.kill(os.getpid(), self.signum)
