"""A memory check before the first batch: one forward pass of 2 images estimates a training step's memory."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

log = logging.getLogger(__name__)


class MemoryEstimateError(RuntimeError):
    """The configured batch would not fit into the machine's memory."""


def estimate_training_bytes(model: torch.nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """``(bytes per training sample, fixed bytes)`` of a training step, from one forward pass of 2 images.

    Per sample: every tensor autograd saves for the backward pass (parameters excluded, shared storage
    counted once). Fixed: parameters x 4 (weights, gradients and two Adam moments). Random streams and
    buffers (e.g. BatchNorm statistics) are left as they were."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model.train()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = model(torch.rand(2, *input_shape, device=device))  # 2: BatchNorm needs more than 1
            seen[-1] = out.numel() * out.element_size()
            del out
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    fixed = 4 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return math.ceil(sum(seen.values()) / 2), fixed


def available_bytes(use_gpu: bool) -> Optional[int]:
    """Free memory of the device training will run on (GPU free memory, else the host's MemAvailable)."""
    if use_gpu and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(
    model,
    input_shape: Sequence[int],
    batch_size: int,
    use_gpu: bool,
    processes: int = 1,
    mode: str = "error",
    available: Optional[int] = None,
) -> Optional[dict]:
    """Estimate a training step's memory and compare it with the machine's; ``mode``: error, warn or off.

    Returns the estimate (for metrics.json) or None when skipped."""
    if mode == "off":
        return None
    if mode not in ("error", "warn"):
        raise ValueError(f"memory_check={mode!r}: expected one of error, warn, off")
    try:
        per_sample, fixed = estimate_training_bytes(model, input_shape)
    except Exception as err:  # the estimate is a courtesy: a model it cannot run is left to the real first step
        log.warning("memory estimate skipped: a test forward pass failed (%s: %s)", type(err).__name__, err)
        return None
    share = 1 if use_gpu else max(1, processes)  # CPU processes share the host's memory
    needed = share * (fixed + batch_size * per_sample)
    available = available if available is not None else available_bytes(use_gpu)
    estimate = {
        "per_sample_bytes": per_sample,
        "fixed_bytes": fixed,
        "batch_size": batch_size,
        "needed_bytes": needed,
        "available_bytes": available,
    }
    if available is None or needed <= 0.9 * available:
        return estimate
    fits = math.floor((0.9 * available / share - fixed) / per_sample) if per_sample else batch_size
    gib = 2**30
    where = "GPU" if use_gpu else "host"
    message = (
        f"a training step of this model needs about {needed / gib:.1f} GiB for data.batch_size={batch_size} "
        f"({per_sample / 2**20:.1f} MiB of activations per image, estimated from one forward pass), "
        f"but only {available / gib:.1f} GiB of {where} memory is available; "
        + (f"data.batch_size={fits} would fit" if fits >= 1 else "even data.batch_size=1 would not fit")
        + ". Set memory_check=warn to run anyway"
    )
    if mode == "error":
        raise MemoryEstimateError(message)
    log.warning(message)
    return estimate


def check_run_memory(cfg, model, trainer) -> Optional[dict]:
    """:func:`check_memory` for a configured run (``memory_check`` = error / warn / off) about to train
    ``model`` with ``trainer``: its image shape, batch size, device and processes. None when skipped (no
    training or nothing trainable)."""
    if not cfg.train or not any(True for _ in model.trainable_parameters()):
        return None
    return check_memory(
        model,
        (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size),
        int(cfg.data.batch_size),
        use_gpu=trainer.strategy.root_device.type == "cuda",
        processes=trainer.world_size,
        mode=cfg.get("memory_check", "error"),
    )
