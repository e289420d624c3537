"""Figure 2: GE-ViT feature maps per layer for a digit and its quarter turns (and their group deviation)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import torch

from gevit.analysis import element_name, layer_latents, most_group_varying_channel
from scripts.figures.common import LoadedModel, save_png, show_digit, show_map

EXPECTED = "a GE-ViT / GSA-Nets checkpoint (a GroupTransformer network) over a group containing the 90° rotation"


def gevit_latents(model: LoadedModel, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``image`` (1, C, H, W) in [0, 1] and its three quarter turns through the GE-ViT of ``model``: every
    layer's output (4, C_l, |G|, h_l, w_l) and the equivariance errors (layers, 4)
    (:func:`gevit.analysis.layer_latents`)."""
    model.require("latents", EXPECTED, lambda f: f.kind == "gevit" and f.group.contains_quarter_turn)
    return layer_latents(model.net, model.normalize(image))


def plot_gevit_latents(
    model: LoadedModel,
    image: torch.Tensor,
    label: int,
    path: str | Path,
    channels: Optional[Sequence[int]] = None,
    subtract_group_mean: bool = False,
    image_name: str = "validation digit",
) -> tuple[Path, torch.Tensor]:
    """Rows: the input rotated by 0/90/180/270 degrees; one panel group per layer (lifting, then each
    transformer layer) holding the |G| group-axis maps of one channel. With ``subtract_group_mean`` each
    map is shown minus the mean over the group axis (diverging colours): the part that depends on the
    group element, where the cyclic shift of the group axis is easy to see. Returns the PNG path and the
    equivariance errors (layers, 4)."""
    features, errors = gevit_latents(model, image)
    group = model.facts.group
    if channels is None:
        channels = [most_group_varying_channel(f) for f in features]
    elif len(channels) == 1:
        channels = list(channels) * len(features)
    elif len(channels) != len(features):
        raise ValueError(f"give one channel for all layers or one per layer ({len(features)}), got {list(channels)}")
    order = group.order
    fig = plt.figure(figsize=(1.2 + 1.0 * order * len(features), 5.4), layout="constrained")
    input_fig, *layer_figs = fig.subfigures(1, 1 + len(features), width_ratios=[1] + [order] * len(features))
    for k, ax in enumerate(input_fig.subplots(4, 1)):
        show_digit(ax, torch.rot90(image[0], k, dims=(-2, -1)), f"input {90 * k}°")
        ax.set_ylabel("reference" if k == 0 else f"max err {float(errors[:, k].max()):.0e}", fontsize=7)
    for layer, (subfig, f, channel) in enumerate(zip(layer_figs, features, channels, strict=True)):
        maps = f[:, channel]  # (4, |G|, h, w)
        if subtract_group_mean:
            maps = maps - maps.mean(dim=1, keepdim=True)
            high = float(maps.abs().max())
            low, cmap = -high, "RdBu_r"
        else:
            low, high, cmap = float(maps.min()), float(maps.max()), "viridis"  # one scale per layer
        axes = subfig.subplots(4, order, squeeze=False)
        for k in range(4):
            for g in range(order):
                show_map(
                    axes[k, g],
                    maps[k, g],
                    f"g={element_name(group, g)}" if k == 0 else "",
                    cmap=cmap,
                    vmin=low,
                    vmax=high,
                )
        name = "lifting" if layer == 0 else f"layer {layer}"
        subfig.suptitle(
            f"{name}, channel {channel} ({maps.shape[-2]}x{maps.shape[-1]})\n"
            f"equivariance error {float(errors[layer].max()):.1e}",
            fontsize=8,
        )
    shown = "feature minus its mean over the group axis" if subtract_group_mean else "feature maps"
    fig.suptitle(
        f"{model.title()}\n{image_name} (class {label}), {shown}: rotating the input by 90° rotates "
        f"every map and shifts the group axis by {group.quarter_turn_steps()} element(s)",
        fontsize=9,
    )
    return save_png(fig, path), errors
