"""Real ``train.py`` processes for the lifecycle tests: started as a user starts them, side by side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.compose import FAST

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
EPOCHS = 3
STEPS_PER_EPOCH = 4  # data.train_size=256 / data.batch_size=64
PAUSE = ["+callbacks.pause._target_=tests.support.lifecycle.PauseAt"]


def _as_from_a_terminal() -> None:
    """In the child, before train.py starts: SIGINT handled as in a terminal (Ctrl-C). A shell that starts the
    suite in the background (``pytest &``, nohup, some CI runners) ignores SIGINT, the children inherit that and
    Python then installs no KeyboardInterrupt handler: the SIGINT tests would wait for a run that never stops."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # exec keeps an ignored signal ignored, not this


def launch(out: Path, *overrides: str, pause: bool | str = False) -> subprocess.Popen:
    """``python train.py hydra.run.dir=out ...`` as a user starts it (stdout+stderr into out.log); ``pause``:
    True (mid-epoch 1) or a :class:`tests.support.lifecycle.PauseAt` point."""
    extra = (PAUSE + [f"+callbacks.pause.output_dir={out}"]) if pause else []
    if isinstance(pause, str):
        extra.append(f"+callbacks.pause.at={pause}")
    cmd = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={out}",
        f"trainer.max_epochs={EPOCHS}",
        "print_config=false",
        *FAST,
        *overrides,
        *extra,
    ]
    log = open(f"{out}.log", "w")
    return subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=_as_from_a_terminal
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, Path(f"{path.parent}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def finish(proc: subprocess.Popen, out: Path, timeout: float = 600.0) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    return rc, Path(f"{out}.log").read_text()


def metrics_of(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())
