"""Rotation robustness: accuracy per rotation angle and how much the logits move.

Plain torch, usable from a notebook (``evaluate_rotation_robustness``) or accumulated batch by batch
inside a test loop (``RotationRobustness``, what the training pipeline uses).

For every angle a the test images x are rotated counter-clockwise (exactly with ``torch.rot90`` for
multiples of 90 degrees, bilinear otherwise, see :func:`gevit.rotations.rotate`) and we record

* ``accuracy(a)``: fraction of correct predictions on the rotated images;
* ``invariance_error(a) = mean_i ||f(R_a x_i) - f(x_i)|| / ||f(x_i)||`` on the logits.

For an exactly C4-invariant model the 90/180/270 errors are at float precision; other angles are
measured, not expected to vanish (the pixel grid is not rotation-symmetric).

Given a ``group`` (the group a post-hoc wrapper is made invariant to), the accuracy on the images transformed
by each of its elements is reported too (``group_element_accuracy``, in the element order of
:mod:`gevit.groups`, and its mean ``group_acc``: equiadapt's ``test/acc_group_element_i`` / ``test/group_acc``):
the rotations are angles of the sweep, the mirrored elements are evaluated besides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch

from gevit.groups import Group
from gevit.rotations import rotate

QUARTER_TURNS = (90.0, 180.0, 270.0)


def _angle_key(angle: float) -> float:
    return round(float(angle) % 360.0, 9)


def default_angles(step_deg: float = 15.0) -> list[float]:
    """0, step, 2*step, ... < 360."""
    n = int(round(360.0 / step_deg))
    return [i * step_deg for i in range(n)]


@dataclass
class RotationRobustness:
    """Accumulates per-angle accuracy and logit invariance error over batches.

    ``update(model, images, targets)`` runs ``model`` (raw images -> logits) on every rotated copy.
    Counts are tensors so that a distributed caller can sum them across processes before ``result``.
    """

    angles: Sequence[float] = field(default_factory=default_angles)
    interpolation: str = "bilinear"
    padding_mode: str = "zeros"  # F.grid_sample's fill of pixels rotated in from outside
    # A group (gevit.groups.Group) whose every element's accuracy is also reported: its rotations are
    # angles of the sweep, its mirrored elements are evaluated besides.
    group: Optional[Group] = None

    def __post_init__(self):
        # 0 is the reference of the invariance error; the quarter turns give the exact-invariance summary.
        wanted = {_angle_key(a) for a in self.angles} | {0.0, *QUARTER_TURNS}
        if self.group is not None:
            wanted |= {_angle_key(self.group.angle_deg(i)) for i in range(self.group.num_rotations)}
        self.angles = sorted(wanted)
        self.mirrored_elements = [i for i, (_, m) in enumerate(self.group.elements) if m] if self.group else []
        self.reset()

    def reset(self) -> None:
        n = len(self.angles)
        self.correct = torch.zeros(n, dtype=torch.float64)
        self.error_sum = torch.zeros(n, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.mirrored_correct = torch.zeros(len(self.mirrored_elements), dtype=torch.float64)

    @torch.no_grad()
    def update(
        self, model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, targets: torch.Tensor
    ) -> None:
        reference = model(images).float()
        ref_norm = reference.norm(dim=-1).clamp_min(1e-12)
        for i, angle in enumerate(self.angles):
            logits = (
                reference
                if angle == 0.0
                else model(
                    rotate(images, angle, interpolation=self.interpolation, padding_mode=self.padding_mode)
                ).float()
            )
            self.correct[i] += (logits.argmax(-1) == targets).sum().item()
            self.error_sum[i] += ((logits - reference).norm(dim=-1) / ref_norm).sum().item()
        for j, element in enumerate(self.mirrored_elements):
            transformed = self.group.act_on_images(
                images, element, interpolation=self.interpolation, padding_mode=self.padding_mode
            )
            self.mirrored_correct[j] += (model(transformed).argmax(-1) == targets).sum().item()
        self.count += len(targets)

    def state_tensor(self) -> torch.Tensor:
        """All counts in one tensor (for a cross-process sum)."""
        return torch.cat([self.correct, self.error_sum, self.count.view(1), self.mirrored_correct])

    def load_state_tensor(self, state: torch.Tensor) -> None:
        n = len(self.angles)
        state = state.detach().to("cpu", torch.float64)
        self.correct, self.error_sum, self.count = state[:n].clone(), state[n : 2 * n].clone(), state[2 * n].clone()
        self.mirrored_correct = state[2 * n + 1 :].clone()

    def group_element_accuracy(self) -> list[float]:
        """Accuracy on the images transformed by each element of ``group``, in its element order (rotations
        read from the sweep)."""
        n = max(float(self.count), 1.0)
        mirrored = dict(zip(self.mirrored_elements, (self.mirrored_correct / n).tolist()))
        by_angle = dict(zip(self.angles, (self.correct / n).tolist()))
        return [
            mirrored[i] if i in mirrored else by_angle[_angle_key(self.group.angle_deg(i))]
            for i in range(self.group.order)
        ]

    def result(self, requested_angles: Optional[Iterable[float]] = None) -> dict:
        """``{"angles", "accuracy", "invariance_error", "num_samples", "acc_mean", "acc_min",
        "invariance_error_rot90"}`` (and, with a ``group``, ``"group_element_accuracy"`` and ``"group_acc"``,
        their mean); per-angle lists restricted to ``requested_angles`` when given."""
        n = max(float(self.count), 1.0)
        acc = (self.correct / n).tolist()
        err = (self.error_sum / n).tolist()
        keep = sorted({_angle_key(a) for a in requested_angles}) if requested_angles is not None else self.angles
        idx = [self.angles.index(a) for a in keep]
        quarter = [err[self.angles.index(a)] for a in QUARTER_TURNS]
        by_element = {}
        if self.group is not None:
            elements = self.group_element_accuracy()
            by_element = {"group_element_accuracy": elements, "group_acc": sum(elements) / len(elements)}
        return {
            "angles": [self.angles[i] for i in idx],
            "accuracy": [acc[i] for i in idx],
            "invariance_error": [err[i] for i in idx],
            "num_samples": int(self.count),
            "acc_mean": sum(acc[i] for i in idx) / len(idx),
            "acc_min": min(acc[i] for i in idx),
            "invariance_error_rot90": sum(quarter) / len(quarter),
            **by_element,
        }


def evaluate_rotation_robustness(
    model: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    angles: Sequence[float] = None,
    max_samples: Optional[int] = None,
    device: Optional[torch.device] = None,
    **kwargs,
) -> dict:
    """Evaluate ``model`` on ``batches`` of (images, labels) at every angle (see module docstring)."""
    meter = RotationRobustness(angles=angles if angles is not None else default_angles(), **kwargs)
    seen = 0
    for images, targets in batches:
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None:
            images, targets = images[: max_samples - seen], targets[: max_samples - seen]
        if device is not None:
            images, targets = images.to(device), targets.to(device)
        meter.update(model, images, targets)
        seen += len(targets)
    return meter.result(angles if angles is not None else None)
