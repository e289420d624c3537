"""How a run ends: signals at any point become a status and an exit code a scheduler can read.

SIGTERM (``scancel``, preemption without submitit) exits 143 and Ctrl-C / SIGINT 130 (the shell's 128 +
signal number), never 0; ``metrics.json`` records ``interrupted: SIGTERM`` / ``SIGINT``, ``requeued`` (submitit
took the job back) or ``failed: <error>``."""

from __future__ import annotations

import os
import signal
from typing import Optional

from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 128 + signal.SIGINT


class SignalGuard:
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


def stop_reason(err: BaseException) -> tuple[str, Optional[int]]:
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
