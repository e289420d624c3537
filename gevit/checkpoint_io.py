"""The one safe reader of checkpoint and weight files (plain torch).

Every file a user names — a run's ``ckpt_path``, a post-hoc backbone, ``model.init_from`` (official GE-ViT
weights), ``model.init_aggregator_from``, torchvision/peer-ViT weights, the figures' checkpoints — is read by
:func:`read_checkpoint`, which looks at the file before unpickling anything and raises one error per fault,
each naming the file and the option it came from:

============================  =========================================================================
:class:`MissingCheckpointError`  the path does not exist or is a folder
:class:`CorruptCheckpointError`  empty, truncated or damaged torch file
:class:`ForeignCheckpointError`  not a torch file at all (a text file, random bytes), or (raised by callers)
                                 a torch file that is not the kind asked for
:class:`UnsafeCheckpointError`   a pickle holding Python objects beyond tensors and plain containers, which
                                 could run code when unpickled; it is refused, never run
============================  =========================================================================

Loading is ``torch.load(weights_only=True)``; only numpy's scalar/array reconstructors are added to torch's
allowed globals (they build data, never call code).
"""

from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "ForeignCheckpointError",
    "MissingCheckpointError",
    "UnsafeCheckpointError",
    "read_checkpoint",
]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # every pickle of protocol >= 2 starts with the PROTO opcode
_LEGACY_TORCH_PROTOCOL = 2


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used; the message names the file and the fix."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The named file does not exist (or is a folder)."""


class CorruptCheckpointError(CheckpointError):
    """An empty, truncated or damaged torch file."""


class ForeignCheckpointError(CheckpointError):
    """Not a torch file (text, random bytes), or not the kind of torch file that was asked for."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle holding objects ``torch.load(weights_only=True)`` refuses (they could run code)."""


def _plain_numpy_globals() -> list:
    try:
        from numpy.core.multiarray import _reconstruct, scalar  # noqa: F401
    except ImportError:  # numpy 2 moved them
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore
    return [_reconstruct, scalar, np.ndarray, np.dtype, type(np.dtype("float64")), type(np.dtype("int64"))]


_SAFE_GLOBALS_ADDED = False


def register_safe_globals() -> None:
    """Allow numpy scalars/arrays (some older checkpoints carry a best score as ``np.float64``); idempotent."""
    global _SAFE_GLOBALS_ADDED
    if not _SAFE_GLOBALS_ADDED:
        torch.serialization.add_safe_globals(_plain_numpy_globals())
        _SAFE_GLOBALS_ADDED = True


def _source(path: Path, option: Optional[str], what: str) -> str:
    return f"the {what} {option}={path}" if option else f"the {what} {path}"


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def _pickled_globals(path: Path, limit: int = 5) -> list[str]:
    """The ``module.name`` globals a plain pickle imports (best effort: what a reader would be asked to run)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                if len(found) >= limit:
                    break
    except Exception:
        pass
    return found


def _unsafe(source: str, names: list[str]) -> UnsafeCheckpointError:
    needs = f" (it imports {', '.join(names)})" if names else ""
    return UnsafeCheckpointError(
        f"refusing to load {source}: it holds Python objects beyond tensors and plain containers{needs}, which "
        f"could run code when unpickled; nothing was run. This project's train.py never writes such files. Only "
        f"if you trust its source: convert it once with torch.load(weights_only=False) and save its state_dict"
    )


def corrupt_error(source: str, path: Path, detail: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{source} is truncated or corrupt ({detail}); it was not loaded. Move it aside (mv {path} "
        f"{path}.corrupt) and use a good copy: a run resumes from the checkpoint before it, or starts fresh"
    )


def read_checkpoint(
    path: str | os.PathLike, *, option: Optional[str] = None, what: str = "checkpoint", map_location: Any = "cpu"
) -> Any:
    """Read the torch file ``path`` safely (``weights_only=True``).

    ``option`` (e.g. ``"model.init_from"``) and ``what`` (e.g. ``"backbone checkpoint"``) only shape the error
    messages, so each says where the path came from. Raises a :class:`CheckpointError` subclass per fault."""
    register_safe_globals()
    path = Path(path).expanduser()
    source = _source(path, option, what)
    if not path.exists():
        raise MissingCheckpointError(f"{source} does not exist")
    if path.is_dir():
        raise MissingCheckpointError(f"{source} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        raise CheckpointError(f"{source} cannot be read ({err.strerror or err})") from None
    if not head:
        raise corrupt_error(source, path, "the file is empty")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise corrupt_error(source, path, "its zip archive is incomplete")
    elif head[0] != _PICKLE_PROTO:
        kind = "a text file" if _looks_like_text(head) else "neither torch's zip format nor a pickle"
        raise ForeignCheckpointError(f"{source} is not a PyTorch checkpoint ({kind}); name a .ckpt/.pt file")
    elif len(head) > 1 and head[1] != _LEGACY_TORCH_PROTOCOL:
        # torch's legacy format is pickle protocol 2; anything else was written by pickle itself
        names = _pickled_globals(path)
        if names:
            raise _unsafe(source, names)
        raise ForeignCheckpointError(
            f"{source} is a plain pickle (written by pickle.dump, not torch.save); name a .ckpt/.pt file"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" in text or "global" in text or "Unsupported operand" in text:
            try:
                names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))[:5]
            except Exception:
                names = _pickled_globals(path)
            if names or "GLOBAL" in text:
                raise _unsafe(source, names) from None
        raise corrupt_error(source, path, text.splitlines()[0] if text else "unreadable pickle") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError, IndexError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise corrupt_error(source, path, detail[:200]) from None
