"""One process per run directory: ``<run_dir>/run.lock`` (pid, host, scheduler job id)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


LOCK_FILE = "run.lock"


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


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), from /proc; None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
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
        self.path = Path(run_dir) / LOCK_FILE
        self.owned = False

    def _mine(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "job_id": current_job_id(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_unix": time.time(),
        }

    def _read(self) -> Optional[dict]:
        """The lock's content; ``{}`` when there is no lock, None when it is unreadable or not a lock."""
        try:
            content = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return content if isinstance(content, dict) and content else None

    def held_by_live_process(self) -> bool:
        """True when another live process on this host holds the lock (nothing is changed)."""
        other = self._read()
        if not other:
            return False
        pid = other.get("pid")
        return (
            other.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and pid != os.getpid()
            and pid_is_alive(pid)
            and not self._pid_was_reused(other)
        )

    @staticmethod
    def _pid_was_reused(other: dict) -> bool:
        """True when the process now holding the lock's pid started after the lock was written."""
        written, pid = other.get("started_unix"), other.get("pid")
        started = process_start_time(pid) if isinstance(pid, int) else None
        return isinstance(written, (int, float)) and started is not None and started > written + 2.0

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
                    log.warning("run dir %s: replacing an unreadable lock file %s", self.path.parent, self.path)
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
            if self._pid_was_reused(other):
                log.warning(
                    "run dir %s: taking over a stale lock left by %s: that process ended and its pid now belongs "
                    "to a process started later",
                    self.path.parent,
                    who,
                )
            else:
                raise RunDirLockedError(
                    f"run dir {self.path.parent} is in use by {who}. Two runs in one directory would mix their "
                    f"checkpoints and logs: wait for it, stop it, or give this run another directory "
                    f"(hydra.run.dir=...). If that process is not a run (its pid was reused after the run died), "
                    f"delete {self.path} and run again"
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


def quiet_secondary_process() -> None:
    """Keep only warnings and errors of a DDP process that is not rank 0 (they share rank 0's log file)."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
