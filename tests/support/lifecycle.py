"""Callbacks the lifecycle tests inject into real train.py processes (``+callbacks.pause._target_=...``)."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseAt(Callback):
    """Write ``<output_dir>/paused_at`` and wait (up to ``timeout_s``) until the process is signalled — a
    deterministic point to kill or signal a real run. Fires once per run directory, so the resumed run goes
    through.

    ``at``: ``train_batch`` (training batch ``batch`` of epoch ``epoch``), ``fit_setup`` (the data preparation
    of fit, before any batch), ``fit_teardown`` (the end of fit, before the test starts), ``test_setup`` (the
    data preparation of the test) or ``test_batch`` (the first test batch)."""

    def __init__(self, output_dir: str, epoch: int = 1, batch: int = 1, timeout_s: float = 900.0, at="train_batch"):
        self.marker = Path(output_dir) / "paused_at"
        self.epoch, self.batch, self.timeout_s, self.at = epoch, batch, timeout_s, at

    def _pause(self, trainer, where: str) -> None:
        if self.marker.exists():
            return
        self.marker.write_text(f"{where} epoch {trainer.current_epoch} step {trainer.global_step}\n")
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.05)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.at == "train_batch" and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self._pause(trainer, f"batch {batch_idx}")

    def setup(self, trainer, pl_module, stage) -> None:
        stage = getattr(stage, "value", stage)  # a TrainerFn
        if self.at == f"{stage}_setup":
            self._pause(trainer, f"{stage} setup")

    def teardown(self, trainer, pl_module, stage) -> None:
        stage = getattr(stage, "value", stage)
        if self.at == f"{stage}_teardown":
            self._pause(trainer, f"{stage} teardown")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.at == "test_batch":
            self._pause(trainer, f"test batch {batch_idx}")
