"""Figure 3: attention maps of a GE-ViT / GSA-Nets (local group attention) and of a ViT (CLS attention, rollout)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from gevit.analysis import element_name, group_attention_maps, predict_probabilities, vit_cls_attention
from scripts.figures.common import LoadedModel, overlay, save_png, show_digit, show_map


def gevit_attention(model: LoadedModel, images: torch.Tensor) -> list[dict]:
    """Per attention layer of the GE-ViT, for images (B, C, H, W) in [0, 1]: ``received`` (B, h, w) and
    ``centre`` (B, |G|, k, k) (:func:`gevit.analysis.group_attention_maps`)."""
    model.require("attention", "a GE-ViT / GSA-Nets checkpoint for --gevit-ckpt", lambda f: f.attention == "group")
    return group_attention_maps(model.net, model.normalize(images))


def vit_attention(model: LoadedModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS attention per block (B, depth, g, g) and its rollout (B, g, g) for images in [0, 1]."""
    model.require(
        "attention", "a ViT checkpoint (a VisionTransformer network) for --vit-ckpt", lambda f: f.attention == "tokens"
    )
    return vit_cls_attention(model.net, model.normalize(images))


def _upright_and_quarter_turn(image: torch.Tensor) -> torch.Tensor:
    return torch.cat([image, torch.rot90(image, 1, dims=(-2, -1))])


def plot_gevit_attention(
    model: LoadedModel, image: torch.Tensor, label: int, path: str | Path, image_name: str = "validation digit"
) -> Path:
    """Top: the digit upright and rotated 90°, with the attention each position receives in every layer.
    Bottom: per layer (rows) and output group element (columns), the k x k attention of the centre query."""
    copies = _upright_and_quarter_turn(image)
    layers = gevit_attention(model, copies)
    group = model.facts.group
    order = group.order
    fig = plt.figure(
        figsize=(max(1.6 * (1 + len(layers)), 1.4 * order + 1), 3.4 + 1.5 * len(layers)), layout="constrained"
    )
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.2, 1.5 * len(layers)])
    axes = top.subplots(2, 1 + len(layers), squeeze=False)
    side = copies.shape[-1]
    for row, angle in enumerate((0, 90)):
        show_digit(axes[row, 0], copies[row], f"input {angle}°")
        axes[row, 0].plot([side // 2], [side // 2], marker="+", color="red", markersize=8)  # the centre query
        for column, layer in enumerate(layers, start=1):
            name = "lifting" if column == 1 else f"layer {column - 1}"
            show_map(
                axes[row, column],
                layer["received"][row],
                f"{name} ({layer['side']}x{layer['side']})" if row == 0 else "",
                cmap="inferno",
            )
    top.suptitle("attention received per position (sum over queries, heads, group elements)", fontsize=8)
    centre_axes = bottom.subplots(len(layers), order, squeeze=False)
    for row, layer in enumerate(layers):
        for g in range(order):
            ax = centre_axes[row, g]
            show_map(
                ax, layer["centre"][0, g], f"v={element_name(group, g)}" if row == 0 else "", cmap="viridis", vmin=0
            )
            if g == 0:
                ax.set_ylabel("lifting" if row == 0 else f"layer {row}", fontsize=7)
    bottom.suptitle(
        "upright input: the centre position (red +) attending over its k x k neighbourhood, per output "
        "element v\nmean over heads; group layers: mean over query elements g, sum over key elements m",
        fontsize=8,
    )
    fig.suptitle(f"{model.title()}\n{image_name} (class {label})", fontsize=9)
    return save_png(fig, path)


def plot_vit_attention(
    model: LoadedModel, image: torch.Tensor, label: int, path: str | Path, image_name: str = "validation digit"
) -> Path:
    """Rows: the digit upright and rotated 90°; columns: the CLS attention over the patches in each block
    (mean over heads) and the attention rollout, overlaid on the image, with the prediction per row."""
    copies = _upright_and_quarter_turn(image)
    per_block, rollout = vit_attention(model, copies)
    probs = predict_probabilities(model.module, copies)
    depth = per_block.shape[1]
    fig, axes = plt.subplots(
        2, depth + 2, figsize=(max(1.7 * (depth + 2), 6.5), 4.6), squeeze=False, layout="constrained"
    )
    for row, angle in enumerate((0, 90)):
        predicted = int(probs[row].argmax())
        show_digit(
            axes[row, 0], copies[row], f"input {angle}°\npredicts {predicted} (p={float(probs[row, predicted]):.2f})"
        )
        for block in range(depth):
            overlay(axes[row, block + 1], copies[row], per_block[row, block], f"block {block + 1}" if row == 0 else "")
        overlay(axes[row, depth + 1], copies[row], rollout[row], "rollout" if row == 0 else "")
    fig.suptitle(
        f"{model.title()}\n{image_name} (class {label})\nCLS-token attention over the patches "
        "(mean over heads) and its rollout",
        fontsize=8,
    )
    return save_png(fig, path)
