"""Which path the group attention layers run: a fused kernel (``cpu``, ``triton``) or the ``eager`` reference.

The choice, strongest first: a layer's ``backend`` attribute, :func:`set_attention_backend` (process-wide),
the environment variable ``GEVIT_ATTENTION=auto|eager|cpu|triton``, else ``auto``. :func:`select_backend`
turns it into the path for one input: ``auto`` takes the Triton kernel on CUDA and the C++/OpenMP kernel on the
CPU where they are available (float32 and float64 only), else eager; an explicit ``cpu`` or ``triton`` that
cannot run is an error. The first call on each path logs one line saying which path runs (a warning when it
falls back).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from gevit import openmp

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "cpu", "triton")
ENVIRONMENT_VARIABLE = "GEVIT_ATTENTION"
_backend_override: Optional[str] = None
_announced: set = set()


def set_attention_backend(name: Optional[str]) -> None:
    """Process-wide choice of the attention path (``None``: back to ``$GEVIT_ATTENTION`` / ``auto``)."""
    global _backend_override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r}")
    _backend_override = name


def requested_backend(layer_choice: Optional[str] = None) -> str:
    """The requested path (one of :data:`BACKENDS`): the layer's choice, the process-wide one, or the environment's."""
    name = layer_choice or _backend_override or os.environ.get(ENVIRONMENT_VARIABLE, "auto")
    if name not in BACKENDS:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be one of {BACKENDS}, got {name!r}")
    return name


def _announce(path: str, detail: str, warn: bool = False, message: Optional[str] = None) -> None:
    if path not in _announced:
        _announced.add(path)
        (log.warning if warn else log.info)(message or f"GE-ViT attention runs on the {path} path{detail}")


def select_backend(x: torch.Tensor, layer_choice: Optional[str] = None) -> str:
    """``eager``, ``cpu`` or ``triton`` for an input ``x`` (see the module docstring)."""
    name = requested_backend(layer_choice)
    if name == "eager":
        _announce("eager", " (requested)")
        return "eager"
    if x.dtype not in (torch.float32, torch.float64):
        return "eager"
    if name == "triton" or (name == "auto" and x.device.type == "cuda"):
        from gevit.layers.kernels import triton_attention

        if triton_attention.available(x.device):
            _announce("triton", f" (fused Triton kernel on {x.device.type})")
            return "triton"
        if name == "triton":
            raise RuntimeError(f"the Triton attention kernel is not available: {triton_attention.unavailable_reason()}")
        _announce(
            "eager", f": no Triton kernel for {x.device.type} ({triton_attention.unavailable_reason()})", warn=True
        )
        return "eager"
    if x.device.type != "cpu":
        return "eager"
    from gevit.layers.kernels import cpu

    if cpu.load() is not None:
        _announce("cpu", " (fused C++ kernel, %d threads)" % torch.get_num_threads())
        if torch.get_num_threads() > 1 and openmp.spinning_note():
            _announce("spinning", "", warn=True, message=f"GE-ViT attention: {openmp.spinning_note()}")
        return "cpu"
    if name == "cpu":
        raise RuntimeError(f"the fused CPU attention kernel could not be built: {cpu.build_error()}")
    _announce("eager", " (the fused CPU kernel is unavailable)", warn=True)
    return "eager"
