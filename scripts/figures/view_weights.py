"""Figure 4: how post-hoc λ-equitune / EquiAttention aggregators weigh the |G| views of each digit."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from gevit.analysis import view_weight_statistics as view_statistics
from scripts.figures.common import CheckpointKindError, LoadedModel, save_png


def view_weight_statistics(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    pre_rotate: bool = True,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """:func:`gevit.analysis.view_weight_statistics` of a post-hoc checkpoint whose aggregator weighs the
    views, on images (N, C, H, W) in [0, 1]; with the checkpoint and label added."""
    model.require("view-weights", "a post-hoc checkpoint (a PostHocInvariant network)", lambda f: f.kind == "posthoc")
    if not model.facts.view_weights:
        raise CheckpointKindError(
            f"view-weights: {model.path} aggregates with '{model.net.aggregator.name}', which "
            "has no per-view weights; expected a post-hoc checkpoint whose aggregator weighs "
            "the views (lambda or equiattention)"
        )
    try:
        stats = view_statistics(
            model.net,
            images,
            labels,
            pre_rotate=pre_rotate,
            seed=seed,
            batch_size=batch_size,
            preprocess=model.normalize,
        )
    except ValueError as err:  # a group without quarter turns and pre-rotation asked for
        raise CheckpointKindError(f"view-weights: {model.path}: {err} (--no-pre-rotate)") from err
    return {"checkpoint": str(model.path), "label": model.label, **stats}


def plot_view_weights(
    model: LoadedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    path: str | Path,
    pre_rotate: bool = True,
    seed: int = 0,
) -> tuple[Path, Path, dict]:
    """Bar charts of how often each view wins and its mean weight (per view, and per transformation
    relative to the upright digit), written as PNG + JSON (the numbers of :func:`view_weight_statistics`).
    Returns (PNG path, JSON path, statistics)."""
    stats = view_weight_statistics(model, images, labels, pre_rotate=pre_rotate, seed=seed)
    path = Path(path)
    json_path = path.with_suffix(".json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(stats, indent=1) + "\n")
    names = stats["view_elements"]
    x = np.arange(len(names))
    panels = [("views (group order)", stats["win_fraction"], stats["mean_weight"])]
    if pre_rotate:
        panels.append(
            (
                "transformation relative to the upright digit",
                stats["relative_win_fraction"],
                stats["relative_mean_weight"],
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (xlabel, wins, means) in zip(axes[0], panels, strict=True):
        ax.bar(x - 0.2, wins, width=0.4, label="fraction of images it wins")
        ax.bar(x + 0.2, means, width=0.4, label="mean weight")
        ax.axhline(stats["uniform_weight"], color="grey", ls="--", lw=0.8, label=f"uniform 1/{len(names)}")
        ax.set_xticks(x, names, fontsize=7, rotation=45 if len(names) > 8 else 0)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    rotated = ", each pre-rotated by a random multiple of 90°" if pre_rotate else ", upright"
    fig.suptitle(
        f"{model.title()}\n{stats['num_images']} validation digits{rotated}: the upright view wins for "
        f"{stats['upright_win_fraction']:.0%} (chance: {stats['uniform_weight']:.0%}); mean winning "
        f"weight {stats['mean_winning_weight']:.3f} (uniform: {stats['uniform_weight']:.3f}); "
        f"accuracy {stats['accuracy']:.0%}",
        fontsize=8,
    )
    fig.tight_layout()
    return save_png(fig, path), json_path, stats
