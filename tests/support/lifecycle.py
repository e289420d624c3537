"""Callbacks the lifecycle tests inject into real train.py processes (``+callbacks.pause._target_=...``)."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseAt(Callback):
    """At training batch ``batch`` of epoch ``epoch``: write ``<output_dir>/paused_at`` and wait (up to
    ``timeout_s``) until the process is signalled — a deterministic point to kill or signal a real run.
    Fires once per run directory, so the resumed run goes through."""

    def __init__(self, output_dir: str, epoch: int = 1, batch: int = 1, timeout_s: float = 120.0):
        self.marker = Path(output_dir) / "paused_at"
        self.epoch, self.batch, self.timeout_s = epoch, batch, timeout_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch != self.epoch or batch_idx != self.batch or self.marker.exists():
            return
        self.marker.write_text(f"epoch {trainer.current_epoch} batch {batch_idx} step {trainer.global_step}\n")
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and not trainer.received_sigterm:
            time.sleep(0.05)
