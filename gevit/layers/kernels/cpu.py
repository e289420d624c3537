"""The fused CPU kernel of the lifting and group self-attention layers (``csrc/group_attention.cpp``).

Built on first use with ``torch.utils.cpp_extension.load`` (the machine's C++ compiler, ninja, OpenMP,
``-O3 -march=native``) into ``$GEVIT_EXTENSIONS_DIR`` (default ``~/.cache/gevit/extensions``), in a folder
keyed on the source, torch's version, the flags and this CPU's model and instruction set, so a cached
build is never reused on another kind of CPU. If the build fails (no compiler, no ninja, ...),
:func:`load` returns ``None`` after one warning and the layers run their eager path.

The kernel's layouts and math are documented at the top of the C++ file; :class:`FusedAttention`
is its autograd function (the backward recomputes the probabilities, nothing attention-sized is saved).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "group_attention.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-DAT_PARALLEL_OPENMP=1"]
TILE = 16  # query positions per vector tile (the kernel's TX); rows are padded to a multiple of it inside

_lock = threading.Lock()
_state: dict = {}


class NormaliserUnderflow(RuntimeError):
    """The factorised normaliser of some query underflowed (its content and spatial maxima are far
    apart); the caller recomputes that call on the eager path."""


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def build_directory() -> Path:
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    for part in (torch.__version__, " ".join(FLAGS), _cpu_signature(), sys.version):
        key.update(part.encode())
    root = Path(os.environ.get("GEVIT_EXTENSIONS_DIR", Path.home() / ".cache" / "gevit" / "extensions"))
    return root / f"group_attention_{key.hexdigest()[:16]}"


def load(verbose: bool = False):
    """The compiled extension module, or ``None`` when it cannot be built (warned once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module = None
        try:
            from torch.utils.cpp_extension import load as load_extension

            # ninja from the venv (pip's ``ninja``) when the venv is not activated
            bin_dir = str(Path(sys.executable).parent)
            if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            module = load_extension(
                name=directory.name,
                sources=[str(SOURCE)],
                extra_cflags=FLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(directory),
                verbose=verbose,
            )
        except Exception as error:  # any build problem: run eager, say so once
            _state["error"] = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
            )
            log.warning(
                "GE-ViT attention: the fused CPU kernel could not be built (%s); using the eager path", _state["error"]
            )
        _state["module"] = module
        return module


def build_error() -> Optional[str]:
    return _state.get("error")


class FusedAttention(torch.autograd.Function):
    """out (B, heads, C, V, H, W) = fused attention of qkv (B, 3, heads, C, G, H, W) (q scaled), the
    positional table ptab (V, k*k, P2), the group embedding emb (N, C - P2) (N = 0: no group term) and
    the index table idx (V, G, M) int32, for a k x k neighbourhood (see the C++ file for the math)."""

    @staticmethod
    def forward(ctx, qkv, ptab, emb, idx, kernel: int, p_drop: float, seeds: tuple[int, int]):
        module = load()
        out, bad = module.forward(qkv, ptab, emb, idx, kernel, p_drop, seeds[0], seeds[1])
        if bad.item():
            raise NormaliserUnderflow(f"{bad.item()} factorised normalisers underflowed")
        ctx.save_for_backward(qkv, ptab, emb, idx)
        ctx.meta = (kernel, p_drop, seeds)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        qkv, ptab, emb, idx = ctx.saved_tensors
        kernel, p_drop, seeds = ctx.meta
        dqkv, dptab, demb = load().backward(grad, qkv, ptab, emb, idx, kernel, p_drop, seeds[0], seeds[1])
        return dqkv, dptab, demb, None, None, None, None
