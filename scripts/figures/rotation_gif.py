"""Figure 1: one digit rotated through 360°, with each model's class probabilities (GIF + static plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from gevit.analysis import rotated_copies, rotation_sweep
from scripts.figures.common import LoadedModel, display_path, figure_rgb, save_png


def rotation_predictions(
    models: Sequence[LoadedModel], image: torch.Tensor, angles: Sequence[float]
) -> dict[str, torch.Tensor]:
    """``{label: probabilities (A, K)}`` of every model on ``image`` (1, C, H, W) rotated by each angle."""
    return {model.label: rotation_sweep(model.module, image, angles) for model in models}


def write_rotation_gif(
    models: Sequence[LoadedModel],
    image: torch.Tensor,
    label: int,
    angles: Sequence[float],
    path: str | Path,
    probabilities: Optional[dict] = None,
    frame_ms: int = 150,
    image_name: str = "validation digit",
) -> Path:
    """Animated GIF, one frame per angle: the digit ``image`` (1, C, H, W) rotated counter-clockwise, and for
    each model (one column each) its class-probability bars, the predicted class highlighted (green when
    it is ``label``, red otherwise)."""
    if not models:
        raise ValueError("the rotation animation needs at least one checkpoint")
    probabilities = probabilities or rotation_predictions(models, image, angles)
    rotated = rotated_copies(image, angles)
    num_classes = next(iter(probabilities.values())).shape[1]
    fig, axes = plt.subplots(
        1,
        1 + len(models),
        figsize=(2.6 + 3.2 * len(models), 3.6),
        gridspec_kw={"width_ratios": [0.8] + [1.0] * len(models)},
    )
    digit = axes[0].imshow(rotated[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    columns = []
    for ax, model in zip(axes[1:], models, strict=True):
        bars = ax.bar(range(num_classes), np.zeros(num_classes), color="lightgrey")
        ax.set_ylim(0, 1.2)  # headroom above p = 1 for the verdict
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_xticks(range(num_classes))
        ax.set_ylabel("probability", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(model.title(width=55), fontsize=7)
        verdict = ax.text(0.5, 0.95, "", transform=ax.transAxes, ha="center", va="top", fontsize=9, weight="bold")
        columns.append((bars, verdict, probabilities[model.label]))
    heading = fig.suptitle("", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))

    frames = []
    for frame, angle in enumerate(angles):
        digit.set_data(rotated[frame, 0].numpy())
        axes[0].set_title(f"input rotated {angle:g}°", fontsize=8)
        heading.set_text(f"{image_name} (class {label}) rotated counter-clockwise by {angle:g}°")
        for bars, verdict, probs in columns:
            predicted = int(probs[frame].argmax())
            colour = "tab:green" if predicted == label else "tab:red"
            for k, bar in enumerate(bars):
                bar.set_height(float(probs[frame, k]))
                bar.set_color(colour if k == predicted else "lightgrey")
            verdict.set_text(f"predicts {predicted} (p={float(probs[frame, predicted]):.2f})")
            verdict.set_color(colour)
        frames.append(figure_rgb(fig))
    plt.close(fig)
    return save_gif(frames, Path(path), frame_ms)


def save_gif(frames: Sequence[np.ndarray], path: Path, frame_ms: int) -> Path:
    """(H, W, 3) uint8 frames -> looping animated GIF at ``path`` (one GIF frame per array)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def plot_rotation_confidence(
    models: Sequence[LoadedModel],
    probabilities: dict,
    label: int,
    angles: Sequence[float],
    path: str | Path,
    image_name: str = "validation digit",
) -> Path:
    """The GIF as one static figure: probability of the true class and predicted class vs angle, per model."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for model in models:
        probs = probabilities[model.label]
        name = f"{model.label}\n{display_path(model.path)}"  # the legend names the checkpoint of each line
        top.plot(angles, probs[:, label].numpy(), marker="o", markersize=3, label=name)
        bottom.step(angles, probs.argmax(-1).numpy(), where="mid", label=name)
    for quarter in (90, 180, 270):
        for ax in (top, bottom):
            ax.axvline(quarter, color="grey", lw=0.5, ls=":")
    top.set_ylabel(f"p(class {label})")
    top.set_ylim(0, 1.02)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.set_ylabel("predicted class")
    bottom.set_yticks(range(probabilities[models[0].label].shape[1]))
    bottom.axhline(label, color="tab:green", lw=4, alpha=0.25)
    bottom.set_xlabel("rotation angle (degrees, counter-clockwise)")
    top.set_title(f"{image_name} (class {label}) under rotation (green band: the true class)", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def rotation_summary(models: Sequence[LoadedModel], probabilities: dict, label: int, angles: Sequence[float]) -> dict:
    """The numbers behind the figure, per model: predictions and p(true class) per angle, fraction right."""
    return {
        m.label: {
            "checkpoint": str(m.path),
            "angles": list(angles),
            "predicted": probabilities[m.label].argmax(-1).tolist(),
            "p_true_class": probabilities[m.label][:, label].tolist(),
            "correct_fraction": float((probabilities[m.label].argmax(-1) == label).double().mean()),
        }
        for m in models
    }
