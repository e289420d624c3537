"""The fused CPU kernel of the lifting and group self-attention layers (``csrc/group_attention.cpp``).

Built on first use with ``torch.utils.cpp_extension.load`` (the machine's C++ compiler, ninja, OpenMP,
``-O3 -march=native``) into ``$GEVIT_EXTENSIONS_DIR`` (default ``~/.cache/gevit/extensions``). The cache
is content-addressed: one folder per build key (the source's bytes, the flags, the compiler's
``--version``, torch's version and commit, the Python ABI and this CPU's model and instruction set),
holding a copy of the source it was compiled from, the library and a ``complete`` marker. A process
that finds the marker imports the library directly (no ninja, no rebuild check), so checkouts at
different paths sharing one environment share one build, and a build is never reused on another kind
of CPU or with another compiler or torch. If the build fails (no compiler, no ninja, ...),
:func:`load` returns ``None`` after one warning and the layers run their eager path.

The kernel's layouts and math are documented at the top of the C++ file; :class:`FusedAttention`
is its autograd function (the backward recomputes the probabilities, nothing attention-sized is saved).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "group_attention.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-DAT_PARALLEL_OPENMP=1"]
LDFLAGS = ["-fopenmp"]
TILE = 16  # query positions per vector tile (the kernel's TX)
COMPLETE = "complete"  # marker written after a successful build

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


def _compiler_signature() -> str:
    """``$CXX --version`` (the compiler torch's extension builder calls), or why it could not run."""
    compiler = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"{compiler}: {error}"


def cache_root() -> Path:
    return Path(os.environ.get("GEVIT_EXTENSIONS_DIR", Path.home() / ".cache" / "gevit" / "extensions"))


def build_key() -> str:
    """What a build depends on, hashed; deliberately not the checkout's or the environment's path."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    parts = (
        " ".join(FLAGS + LDFLAGS),
        _compiler_signature(),
        torch.__version__,
        str(torch.version.git_version),
        str(torch.compiled_with_cxx11_abi()),
        sys.implementation.cache_tag,
        str(sysconfig.get_config_var("EXT_SUFFIX")),
        _cpu_signature(),
    )
    for part in parts:
        key.update(b"\0" + part.encode())
    return key.hexdigest()[:16]


def build_directory() -> Path:
    return cache_root() / f"group_attention_{build_key()}"


def _import(name: str, library: Path):
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cached(directory: Path):
    """The module of a complete build in ``directory``, or ``None``."""
    marker = directory / COMPLETE
    if not marker.exists():
        return None
    library = directory / marker.read_text().strip()
    return _import(directory.name, library) if library.is_file() else None


def _build(directory: Path, verbose: bool):
    """Compile the copy of the source held in ``directory`` and mark the build complete (the caller
    holds the folder's lock)."""
    from torch.utils.cpp_extension import load as load_extension

    # ninja from the venv (pip's ``ninja``) when the venv is not activated
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    source = directory / SOURCE.name
    if not source.exists() or source.read_bytes() != SOURCE.read_bytes():
        staging = directory / f".{SOURCE.name}.{os.getpid()}"
        shutil.copyfile(SOURCE, staging)
        os.replace(staging, source)
    module = load_extension(
        name=directory.name,
        sources=[str(source)],
        extra_cflags=FLAGS,
        extra_ldflags=LDFLAGS,
        build_directory=str(directory),
        verbose=verbose,
    )
    (directory / COMPLETE).write_text(f"{Path(module.__file__).name}\n")
    return module


def load(verbose: bool = False):
    """The compiled extension module, or ``None`` when it cannot be built (warned once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module = None
        try:
            directory = build_directory()
            module = _cached(directory)
            if module is None:
                from filelock import FileLock  # a dependency of torch

                directory.mkdir(parents=True, exist_ok=True)
                with FileLock(str(directory / "gevit.lock")):  # one builder; the others then import its build
                    module = _cached(directory) or _build(directory, verbose)
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
    """out (B, heads, C, V, H, W) = fused attention of qkv (B, 3, heads, C, G, H, W) plus bias (3, heads, C)
    (q and its bias scaled), the positional table ptab (V, k*k, P2), the group embedding emb (N, C - P2)
    (N = 0: no group term) and the index table idx (V, G, M) int32, for a k x k neighbourhood (see the
    C++ file for the math)."""

    @staticmethod
    def forward(ctx, qkv, bias, ptab, emb, idx, kernel: int, p_drop: float, seeds: tuple[int, int]):
        module = load()
        out, bad = module.forward(qkv, bias, ptab, emb, idx, kernel, p_drop, seeds[0], seeds[1])
        if bad.item():
            raise NormaliserUnderflow(f"{bad.item()} factorised normalisers underflowed")
        ctx.save_for_backward(qkv, bias, ptab, emb, idx)
        ctx.meta = (kernel, p_drop, seeds)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        qkv, bias, ptab, emb, idx = ctx.saved_tensors
        kernel, p_drop, seeds = ctx.meta
        grads = load().backward(grad, qkv, bias, ptab, emb, idx, kernel, p_drop, seeds[0], seeds[1])
        return (*grads, None, None, None, None)
