"""Figures from trained checkpoints: rotation GIF, GE-ViT latents, attention maps, post-hoc view weights,
accuracy under rotation of several runs.

    python scripts/visualize.py rotation-gif --ckpt ViT=RUN_A/checkpoints/last.ckpt --ckpt GE-ViT=RUN_B/checkpoints/last.ckpt
    python scripts/visualize.py latents --gevit-ckpt RUN_B/checkpoints/last.ckpt
    python scripts/visualize.py attention --gevit-ckpt RUN_B/checkpoints/last.ckpt --vit-ckpt RUN_A/checkpoints/last.ckpt
    python scripts/visualize.py view-weights --posthoc-ckpt RUN_C/checkpoints/last.ckpt
    python scripts/visualize.py robustness --runs RUN_A "GE-ViT p4=RUN_B"
    python scripts/visualize.py all --vit-ckpt ... --gevit-ckpt ... --posthoc-ckpt ... [--runs ...] [--wandb]

Every checkpoint of ``train.py`` is self-describing (``gevit_model_config`` + ``state_dict``), so the
LightningModule is rebuilt from the file alone. Images are digits of the validation split of the embedded
RotMNIST-mini set, upright (``variant=upright_train``); the test split is never used. Files go to ``--out``
(default ``logs/visualizations/<timestamp>``) with a ``summary.json`` of every number shown; ``--wandb``
also logs them to W&B (project ``gevit``, job_type ``visualize``; offline without credentials). What each
figure shows: docs/visualizations.md.

Each figure has one importable function (``write_rotation_gif``, ``plot_gevit_latents``,
``plot_gevit_attention``, ``plot_vit_attention``, ``plot_view_weights``, ``plot_robustness_comparison``)
taking loaded models / data and an output path and returning the path(s) written.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # `python scripts/visualize.py` puts scripts/ on the path, not the repository with the packages.
    sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from gevit.groups import Group  # noqa: E402
from gevit.layers.blocks import GroupTransformerBlock  # noqa: E402
from gevit.models.group_transformer import GroupTransformer  # noqa: E402
from gevit.models.vit import VisionTransformer  # noqa: E402
from gevit.posthoc.backbones import read_framework_checkpoint  # noqa: E402
from gevit.posthoc.wrapper import PostHocInvariant  # noqa: E402
from gevit.rotations import rotate  # noqa: E402
from lightning_modules.callbacks import plot_rotation_robustness  # noqa: E402

log = logging.getLogger("visualize")

# Backbone / network options that point at files or downloads of *initial* weights: a checkpoint's
# state_dict already holds every trained weight, so the rebuilt module must not need them.
_EXTERNAL_WEIGHT_KEYS = ("ckpt_path", "weights")
# Backbone sources whose architecture is in the config itself (``checkpoint`` reads it from a file).
_SELF_DESCRIBED_BACKBONES = ("vit", "timm", "resnet")
# The peer ViT is this project's ViT with converted weights: rebuilt as ``vit``, it needs no peer file.
_REBUILD_SOURCE_AS = {"peer_vit": "vit"}
VIEW_WEIGHT_AGGREGATORS = ("lambda", "equiattention")


class CheckpointKindError(ValueError):
    """A checkpoint of the wrong kind for a figure (e.g. ``latents`` given a ViT)."""


# ---- checkpoints ---------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A LightningModule rebuilt from a ``train.py`` checkpoint, in eval mode.

    ``module(images in [0, 1], (B, C, H, W)) -> logits (B, K)``; ``module.net`` is the bare network
    (normalised input, ``module.normalize(images)``).
    """

    label: str
    path: Path
    module: torch.nn.Module
    config: dict

    @property
    def target(self) -> str:
        """The LightningModule class of the stored config (``lightning_modules.ImageClassifier``, ...)."""
        return str(self.config.get("_target_", type(self.module).__name__))

    @property
    def net(self) -> torch.nn.Module:
        return self.module.net

    @property
    def kind(self) -> str:
        """``vit``, ``gevit`` (any GroupTransformer), ``posthoc`` or ``other`` (hybrid, EqCvT, ...)."""
        net = getattr(self.module, "net", None)
        if isinstance(net, GroupTransformer):
            return "gevit"
        if isinstance(net, VisionTransformer):
            return "vit"
        if isinstance(net, PostHocInvariant):
            return "posthoc"
        return "other"

    def description(self) -> str:
        """What the network is, for figure titles (e.g. ``GE-ViT p4, 3x3 local attention``)."""
        net = self.net
        if self.kind == "gevit":
            name = "GE-ViT" if net.lifting.encoding == "gevit" else "GSA-Nets"
            reach = "global" if net.lifting.is_global else f"{net.lifting.patch_size}x{net.lifting.patch_size} local"
            return f"{name} {net.group.name}, {reach} attention"
        if self.kind == "vit":
            patch = net.patch_embed.patch_size
            return f"ViT, {len(net.blocks)} blocks, {net.embed_dim}-d, {patch}x{patch} patches"
        if self.kind == "posthoc":
            backbone = type(getattr(net.backbone, "model", net.backbone)).__name__
            group = self.config.get("group", net.group.name)  # the name it was configured with (c4, not p4)
            return (f"post-hoc {net.aggregator.name} over {group} on {backbone} "
                    f"(regime {self.module.regime})")
        return type(net).__name__

    def title(self, width: Optional[int] = None) -> str:
        """``label: description`` (wrapped at ``width`` characters) and, on the last line, the checkpoint it
        comes from."""
        heading = f"{self.label}: {self.description()}"
        return f"{textwrap.fill(heading, width) if width else heading}\n{display_path(self.path)}"


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when below it, else its last three parts (run/checkpoints/file)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.parts[-3:]))


def _strip_external_weights(config: dict, path: Path) -> dict:
    """A copy of a stored model config that rebuilds the architecture without the files or downloads of
    its initial weights (the checkpoint's state_dict overwrites them all)."""
    config = json.loads(json.dumps(config))  # plain deep copy of the YAML-like dict
    if config.get("init_from"):
        config["init_from"] = None  # GE-ViT: official weights it started from
    backbone = config.get("backbone")
    if isinstance(backbone, dict):
        source = backbone["source"] = _REBUILD_SOURCE_AS.get(backbone.get("source"), backbone.get("source"))
        if source in _SELF_DESCRIBED_BACKBONES:
            for key in _EXTERNAL_WEIGHT_KEYS:
                if key in backbone:
                    backbone[key] = None
        elif backbone.get("ckpt_path") and not Path(backbone["ckpt_path"]).is_file():
            raise FileNotFoundError(
                f"{path} is a post-hoc checkpoint whose backbone (source={source}) takes its architecture from "
                f"{backbone['ckpt_path']}, which does not exist any more; restore that file to rebuild it")
    return config


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence one logger: rebuilding a post-hoc wrapper without its stage-1 file warns about random
    backbone weights, which the checkpoint's state_dict replaces right after."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_model(path: str | Path, label: Optional[str] = None) -> LoadedModel:
    """Rebuild the LightningModule of a ``train.py`` checkpoint from its stored ``gevit_model_config``,
    load its ``state_dict`` and put it in eval mode."""
    import hydra
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = read_framework_checkpoint(path)
    config = checkpoint.get("gevit_model_config")
    if not isinstance(config, dict) or "_target_" not in config:
        raise CheckpointKindError(f"{path} stores no model config (gevit_model_config with a _target_); "
                                  "only checkpoints written by this project's train.py can be visualised")
    with _quiet("lightning_modules.posthoc"):
        module = hydra.utils.instantiate(OmegaConf.create(_strip_external_weights(config, path)))
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    model = LoadedModel(label="", path=path, module=module, config=config)
    model.label = label or default_label(model)
    return model


def default_label(model: LoadedModel) -> str:
    """A short column label from the network kind (``ViT``, ``GE-ViT``, ``post-hoc lambda``, ...)."""
    if model.kind == "gevit":
        return "GE-ViT" if model.net.lifting.encoding == "gevit" else "GSA-Nets"
    if model.kind == "vit":
        return "ViT"
    if model.kind == "posthoc":
        return f"post-hoc {model.net.aggregator.name}"
    return type(model.net).__name__


def require_kind(model: LoadedModel, kind: str, command: str, expected: str) -> None:
    """Raise one message naming the file and what ``command`` expects when ``model`` is not ``kind``."""
    if model.kind != kind:
        raise CheckpointKindError(f"{command}: {model.path} holds a {model.description()} ({model.target}); "
                                  f"expected {expected}")


def check_digit_shape(model: LoadedModel) -> None:
    """The figures draw 1x28x28 digits of the embedded data set; refuse models of other inputs."""
    module = model.module
    if (module.in_channels, module.image_size) != (1, 28):
        raise CheckpointKindError(f"{model.path} expects {module.in_channels}x{module.image_size}x{module.image_size} "
                                  "images; these figures use 1x28x28 digits of the embedded RotMNIST-mini set")


# ---- images --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _validation_split():
    """The validation split of the embedded digits, upright (``variant=upright_train``, default sizes and
    split seed: the digits ``train.py`` validates on, never the test split)."""
    from datamodules.rotmnist_mini import RotMNISTMiniDataModule

    datamodule = RotMNISTMiniDataModule(variant="upright_train")
    datamodule.setup("fit")
    return datamodule.val_set


def validation_digits(start: int = 0, count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` upright validation digits from index ``start``: images (N, 1, 28, 28) in [0, 1], labels (N,)."""
    dataset = _validation_split()
    if not 0 <= start < len(dataset):
        raise IndexError(f"image index {start} is outside the validation split (0..{len(dataset) - 1})")
    indices = range(start, min(start + count, len(dataset)))
    images, labels = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(images), torch.stack(labels)


def rotated_copies(image: torch.Tensor, angles: Sequence[float]) -> torch.Tensor:
    """(1, C, H, W) -> (A, C, H, W): counter-clockwise rotations (exact for multiples of 90, else bilinear)."""
    return torch.cat([rotate(image, float(angle)) for angle in angles])


@torch.no_grad()
def predict_probabilities(model: LoadedModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> class probabilities (N, K)."""
    return torch.cat([model.module(chunk).softmax(-1) for chunk in images.split(batch_size)])


# ---- drawing helpers -----------------------------------------------------------------------------------
def _figure_rgb(fig) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _save_png(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _show_digit(ax, image: torch.Tensor, title: str = "") -> None:
    """(C, H, W) or (H, W) image in [0, 1] on ``ax``, without ticks."""
    array = image[0] if image.ndim == 3 else image
    ax.imshow(array.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _overlay(ax, image: torch.Tensor, heat: torch.Tensor, title: str = "") -> None:
    """A coarse (h, w) map stretched over the (C, H, W) image, half transparent."""
    _show_digit(ax, image, title)
    height, width = image.shape[-2:]
    ax.imshow(heat.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest",
              extent=(-0.5, width - 0.5, height - 0.5, -0.5))


def element_name(group: Group, index: int) -> str:
    """``90°`` or ``mirror·90°`` for element ``index`` (mirror first, then the rotation)."""
    rotation, mirror = group.elements[index]
    angle = f"{rotation * 360 / group.num_rotations:g}°"
    return f"mirror·{angle}" if mirror else angle


def quarter_turn_element(group: Group, turns: int) -> int:
    """The group index of ``turns`` counter-clockwise quarter turns."""
    return group.index(((turns % 4) * group.quarter_turn_steps(), 0))


# ---- 1. rotation animation -----------------------------------------------------------------------------
def angles_every(step_deg: float) -> list[float]:
    """0, step, 2*step, ... below 360 degrees."""
    if step_deg <= 0:
        raise ValueError(f"the angle step must be positive, got {step_deg}")
    return [float(a) for a in np.arange(0.0, 360.0, step_deg)]


def rotation_predictions(models: Sequence[LoadedModel], image: torch.Tensor,
                         angles: Sequence[float]) -> dict[str, torch.Tensor]:
    """``{label: probabilities (A, K)}`` of every model on ``image`` (1, C, H, W) rotated by each angle."""
    rotated = rotated_copies(image, angles)
    return {model.label: predict_probabilities(model, rotated) for model in models}


def write_rotation_gif(models: Sequence[LoadedModel], image: torch.Tensor, label: int, angles: Sequence[float],
                       path: str | Path, probabilities: Optional[dict] = None, frame_ms: int = 150,
                       image_name: str = "validation digit") -> Path:
    """Animated GIF, one frame per angle: the digit ``image`` (1, C, H, W) rotated counter-clockwise, and for
    each model (one column each) its class-probability bars, the predicted class highlighted (green when
    it is ``label``, red otherwise)."""
    if not models:
        raise ValueError("the rotation animation needs at least one checkpoint")
    path = Path(path)
    probabilities = probabilities or rotation_predictions(models, image, angles)
    rotated = rotated_copies(image, angles)
    num_classes = next(iter(probabilities.values())).shape[1]
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(2.6 + 3.2 * len(models), 3.6),
                             gridspec_kw={"width_ratios": [0.8] + [1.0] * len(models)})
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
        frames.append(_figure_rgb(fig))
    plt.close(fig)
    return save_gif(frames, path, frame_ms)


def save_gif(frames: Sequence[np.ndarray], path: Path, frame_ms: int) -> Path:
    """(H, W, 3) uint8 frames -> looping animated GIF at ``path`` (one GIF frame per array)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def plot_rotation_confidence(models: Sequence[LoadedModel], probabilities: dict, label: int,
                             angles: Sequence[float], path: str | Path,
                             image_name: str = "validation digit") -> Path:
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
    return _save_png(fig, Path(path))


# ---- 2. GE-ViT latents ---------------------------------------------------------------------------------
def latent_equivariance_errors(features: torch.Tensor, group: Group) -> torch.Tensor:
    """Features (4, C, |G|, h, w) of an input rotated by 0/90/180/270 degrees -> (4,) relative errors
    ``max|f(r^k x) - r^k . f(x)| / max|f(x)|``, with ``r^k .`` rotating space and moving the group axis
    ``g -> r^k g`` (:meth:`Group.act_on_feature_map`). Zero for an exactly equivariant layer."""
    upright = features[:1]
    scale = upright.abs().max().clamp_min(1e-30)
    return torch.stack([
        (features[k:k + 1] - group.act_on_feature_map(upright, quarter_turn_element(group, k), group_dim=2))
        .abs().max() / scale
        for k in range(4)])


@torch.no_grad()
def gevit_latents(model: LoadedModel, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``image`` (1, C, H, W) and its three quarter turns through the GE-ViT: the lifting and every
    transformer layer's output, each (4, C_l, |G|, h_l, w_l), and the equivariance errors (layers, 4)."""
    require_kind(model, "gevit", "latents", "a GE-ViT / GSA-Nets checkpoint (lightning_modules.GroupTransformerClassifier)")
    group = model.net.group
    if not group.contains_quarter_turn:
        raise CheckpointKindError(f"latents: {model.path} is a GE-ViT over {group.name}, which has no 90-degree "
                                  "rotation; the figure needs p4, p8, p4m or another group containing it")
    copies = torch.cat([torch.rot90(image, k, dims=(-2, -1)) for k in range(4)])
    _, extras = model.net.forward_features(model.module.normalize(copies), return_intermediates=True)
    features = extras["features"]
    errors = torch.stack([latent_equivariance_errors(f, group) for f in features])
    return features, errors


def most_group_varying_channel(features: torch.Tensor) -> int:
    """The channel of (4, C, |G|, h, w) features whose maps differ most along the group axis (upright
    input), so the figure shows a channel where the group axis carries information."""
    return int(features[0].std(dim=1).mean(dim=(-2, -1)).argmax())


def plot_gevit_latents(model: LoadedModel, image: torch.Tensor, label: int, path: str | Path,
                       channels: Optional[Sequence[int]] = None, subtract_group_mean: bool = False,
                       image_name: str = "validation digit") -> tuple[Path, torch.Tensor]:
    """Rows: the input rotated by 0/90/180/270 degrees; one panel group per layer (lifting, then each
    transformer layer) holding the |G| group-axis maps of one channel. With ``subtract_group_mean`` each
    map is shown minus the mean over the group axis (diverging colours): the part that depends on the
    group element, where the cyclic shift of the group axis is easy to see. Returns the PNG path and the
    equivariance errors (layers, 4) (see :func:`latent_equivariance_errors`)."""
    features, errors = gevit_latents(model, image)
    group = model.net.group
    if channels is None:
        channels = [most_group_varying_channel(f) for f in features]
    elif len(channels) == 1:
        channels = list(channels) * len(features)
    elif len(channels) != len(features):
        raise ValueError(f"give one channel for all layers or one per layer ({len(features)}), got {list(channels)}")
    order = group.order
    fig = plt.figure(figsize=(1.2 + 1.0 * order * len(features), 5.4), layout="constrained")
    input_fig, *layer_figs = fig.subfigures(1, 1 + len(features), width_ratios=[1] + [order] * len(features))
    input_axes = input_fig.subplots(4, 1)
    for k, ax in enumerate(input_axes):
        _show_digit(ax, torch.rot90(image[0], k, dims=(-2, -1)), f"input {90 * k}°")
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
                ax = axes[k, g]
                ax.imshow(maps[k, g].numpy(), cmap=cmap, vmin=low, vmax=high)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_title(f"g={element_name(group, g)}", fontsize=7)
        name = "lifting" if layer == 0 else f"layer {layer}"
        subfig.suptitle(f"{name}, channel {channel} ({maps.shape[-2]}x{maps.shape[-1]})\n"
                        f"equivariance error {float(errors[layer].max()):.1e}", fontsize=8)
    shown = "feature minus its mean over the group axis" if subtract_group_mean else "feature maps"
    fig.suptitle(f"{model.title()}\n{image_name} (class {label}), {shown}: rotating the input by 90° rotates "
                 f"every map and shifts the group axis by {group.quarter_turn_steps()} element(s)", fontsize=9)
    return _save_png(fig, Path(path)), errors


# ---- 3. attention maps ---------------------------------------------------------------------------------
def gevit_attention_layers(net: GroupTransformer) -> list:
    """The lifting layer and every group self-attention layer, in forward order."""
    return [net.lifting] + [layer.attention for layer in net.transformer if isinstance(layer, GroupTransformerBlock)]


def _square_side(positions: int) -> int:
    side = round(positions ** 0.5)
    if side * side != positions:
        raise ValueError(f"expected a square feature map, got {positions} positions")
    return side


def neighbourhood_attention(probs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """GE-ViT attention probabilities -> (B, heads, HW, |G|_v, k*k): the weight each query position puts on
    each neighbour, per output group element ``v``.

    Lifting probabilities are already (B, heads, HW, |G|, k*k). Group-layer probabilities (B, heads, HW,
    |G|_v, |G|_g, |G|_m * k*k) are summed over the key elements ``m`` and averaged over the query elements
    ``g`` (each (v, g) row sums to one, so the result still sums to one over the neighbourhood).
    """
    k2 = patch_size ** 2
    if probs.ndim == 5:
        return probs
    b, heads, hw, v, g, _ = probs.shape
    return probs.view(b, heads, hw, v, g, -1, k2).sum(-2).mean(-2)


def attention_received(neighbourhood: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, heads, HW, |G|, k*k) -> (B, h, w): how much attention each position receives, summed over
    queries, heads and group elements and normalised to sum to one (an attention-rollout-like saliency map
    for local attention: ``F.fold`` scatters each query's k x k weights back onto the key positions)."""
    side = _square_side(neighbourhood.shape[2])
    per_query = neighbourhood.sum(dim=(1, 3)).transpose(1, 2)  # (B, k*k, HW), unfold's layout
    received = F.fold(per_query, (side, side), patch_size, padding=patch_size // 2)[:, 0]
    return received / received.sum(dim=(-2, -1), keepdim=True)


@torch.no_grad()
def gevit_attention(model: LoadedModel, images: torch.Tensor) -> list[dict]:
    """Per attention layer of the GE-ViT, for images (B, C, H, W) in [0, 1]: ``received`` (B, h, w) (see
    :func:`attention_received`) and ``centre`` (B, |G|, k, k), the attention of the centre query position
    over its neighbourhood averaged over heads, per output group element."""
    require_kind(model, "gevit", "attention", "a GE-ViT / GSA-Nets checkpoint for --gevit-ckpt")
    _, extras = model.net.forward_features(model.module.normalize(images), return_intermediates=True)
    layers = []
    for probs, layer in zip(extras["attention"], gevit_attention_layers(model.net), strict=True):
        k = layer.patch_size
        neighbourhood = neighbourhood_attention(probs, k)
        side = _square_side(neighbourhood.shape[2])
        centre = (side // 2) * side + side // 2
        layers.append({"received": attention_received(neighbourhood, k), "side": side, "patch_size": k,
                       "centre": neighbourhood[:, :, centre].mean(1).unflatten(-1, (k, k))})
    return layers


def plot_gevit_attention(model: LoadedModel, image: torch.Tensor, label: int, path: str | Path,
                         image_name: str = "validation digit") -> Path:
    """Top: the digit upright and rotated 90°, with the attention each position receives in every layer.
    Bottom: per layer (rows) and output group element (columns), the k x k attention of the centre query."""
    copies = torch.cat([image, torch.rot90(image, 1, dims=(-2, -1))])
    layers = gevit_attention(model, copies)
    group = model.net.group
    order = group.order
    fig = plt.figure(figsize=(max(1.6 * (1 + len(layers)), 1.4 * order + 1), 3.4 + 1.5 * len(layers)),
                     layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.2, 1.5 * len(layers)])
    axes = top.subplots(2, 1 + len(layers), squeeze=False)
    side = copies.shape[-1]
    for row, angle in enumerate((0, 90)):
        _show_digit(axes[row, 0], copies[row], f"input {angle}°")
        axes[row, 0].plot([side // 2], [side // 2], marker="+", color="red", markersize=8)  # the centre query
        for column, layer in enumerate(layers, start=1):
            ax = axes[row, column]
            ax.imshow(layer["received"][row].numpy(), cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                name = "lifting" if column == 1 else f"layer {column - 1}"
                ax.set_title(f"{name} ({layer['side']}x{layer['side']})", fontsize=7)
    top.suptitle("attention received per position (sum over queries, heads, group elements)", fontsize=8)
    centre_axes = bottom.subplots(len(layers), order, squeeze=False)
    for row, layer in enumerate(layers):
        for g in range(order):
            ax = centre_axes[row, g]
            ax.imshow(layer["centre"][0, g].numpy(), cmap="viridis", vmin=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"v={element_name(group, g)}", fontsize=7)
            if g == 0:
                ax.set_ylabel("lifting" if row == 0 else f"layer {row}", fontsize=7)
    bottom.suptitle("upright input: the centre position (red +) attending over its k x k neighbourhood, per output "
                    "element v\nmean over heads; group layers: mean over query elements g, sum over key elements m",
                    fontsize=8)
    fig.suptitle(f"{model.title()}\n{image_name} (class {label})", fontsize=9)
    return _save_png(fig, Path(path))


def attention_rollout(attentions: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): per-block probabilities (B, depth, heads, N, N) ->
    (B, N, N) products of the head-averaged attention with the residual path, ``0.5 A + 0.5 I``,
    renormalised per row."""
    averaged = attentions.mean(2)
    eye = torch.eye(averaged.shape[-1], dtype=averaged.dtype)
    rollout = eye.expand_as(averaged[:, 0]).clone()
    for block in range(averaged.shape[1]):
        mixed = 0.5 * averaged[:, block] + 0.5 * eye
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    return rollout


@torch.no_grad()
def vit_cls_attention(model: LoadedModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) in [0, 1] -> the CLS token's attention over the patches on the patch grid:
    per block averaged over heads (B, depth, g, g), and the attention rollout (B, g, g)."""
    require_kind(model, "vit", "attention", "a ViT checkpoint (lightning_modules.ImageClassifier with "
                                            "gevit.models.VisionTransformer) for --vit-ckpt")
    _, attentions = model.net.forward_features(model.module.normalize(images), return_attention=True)
    stacked = torch.stack(attentions, dim=1)  # (B, depth, heads, 1+N, 1+N)
    grid = model.net.patch_embed.grid_size
    per_block = stacked.mean(2)[:, :, 0, 1:].unflatten(-1, (grid, grid))
    rollout = attention_rollout(stacked)[:, 0, 1:].unflatten(-1, (grid, grid))
    return per_block, rollout


def plot_vit_attention(model: LoadedModel, image: torch.Tensor, label: int, path: str | Path,
                       image_name: str = "validation digit") -> Path:
    """Rows: the digit upright and rotated 90°; columns: the CLS attention over the patches in each block
    (mean over heads) and the attention rollout, overlaid on the image, with the prediction per row."""
    copies = torch.cat([image, torch.rot90(image, 1, dims=(-2, -1))])
    per_block, rollout = vit_cls_attention(model, copies)
    probs = predict_probabilities(model, copies)
    depth = per_block.shape[1]
    fig, axes = plt.subplots(2, depth + 2, figsize=(max(1.7 * (depth + 2), 6.5), 4.6), squeeze=False,
                             layout="constrained")
    for row, angle in enumerate((0, 90)):
        predicted = int(probs[row].argmax())
        _show_digit(axes[row, 0], copies[row], f"input {angle}°\npredicts {predicted} (p={float(probs[row, predicted]):.2f})")
        for block in range(depth):
            _overlay(axes[row, block + 1], copies[row], per_block[row, block], f"block {block + 1}" if row == 0 else "")
        _overlay(axes[row, depth + 1], copies[row], rollout[row], "rollout" if row == 0 else "")
    fig.suptitle(f"{model.title()}\n{image_name} (class {label})\nCLS-token attention over the patches "
                 "(mean over heads) and its rollout", fontsize=8)
    return _save_png(fig, Path(path))


# ---- 4. post-hoc view weights --------------------------------------------------------------------------
@torch.no_grad()
def view_weight_statistics(model: LoadedModel, images: torch.Tensor, labels: torch.Tensor,
                           pre_rotate: bool = True, seed: int = 0, batch_size: int = 64) -> dict:
    """The λ-equitune / EquiAttention weights of the |G| views of each image (N, C, H, W) in [0, 1].

    With ``pre_rotate`` each image is first turned by a random multiple of 90 degrees (``seed``), so the
    upright view is a different one per image. Returns plain numbers: per view (in group order) the
    fraction of images it wins (largest weight) and its mean weight; per transformation relative to the
    upright digit (view element ∘ pre-rotation) the same; the fraction of images whose winning view is the
    upright one; the accuracy; and per image its weights, label, prediction and pre-rotation.
    """
    require_kind(model, "posthoc", "view-weights", "a post-hoc checkpoint (lightning_modules.PostHocClassifier) "
                                                   f"with a {' or '.join(VIEW_WEIGHT_AGGREGATORS)} aggregator")
    net = model.net
    aggregator, group = net.aggregator, net.group
    if aggregator.name not in VIEW_WEIGHT_AGGREGATORS or not hasattr(aggregator, "weights"):
        raise CheckpointKindError(f"view-weights: {model.path} aggregates with '{aggregator.name}', which has no "
                                  f"per-view weights; expected a post-hoc checkpoint with a "
                                  f"{' or '.join(VIEW_WEIGHT_AGGREGATORS)} aggregator")
    if pre_rotate and not group.contains_quarter_turn:
        raise CheckpointKindError(f"view-weights: {model.path} is invariant to {group.name}, which has no 90-degree "
                                  "rotation; run without pre-rotation (--no-pre-rotate)")
    generator = torch.Generator().manual_seed(seed)
    turns = (torch.randint(0, 4, (len(images),), generator=generator) if pre_rotate
             else torch.zeros(len(images), dtype=torch.long))
    turned = torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(images, turns, strict=True)])
    weights, predicted = [], []
    for chunk in turned.split(batch_size):
        _, embeddings = net.view_features(model.module.normalize(chunk))
        weights.append(aggregator.weights(embeddings))
        predicted.append(model.module(chunk).argmax(-1))
    weights, predicted = torch.cat(weights).double(), torch.cat(predicted)

    order = group.order
    pre_elements = [quarter_turn_element(group, int(k)) if pre_rotate else 0 for k in turns]
    # view j of the turned image shows the upright digit transformed by g_j ∘ u
    relative = torch.tensor([[group.compose(j, u) for j in range(order)] for u in pre_elements])
    upright_view = torch.tensor([group.inverse(u) for u in pre_elements])
    winners = weights.argmax(1)
    rows = torch.arange(len(images))
    relative_weights = torch.zeros_like(weights).scatter_(1, relative, weights)  # column r: element r relative to upright
    return {
        "checkpoint": str(model.path), "label": model.label, "aggregator": aggregator.name, "group": group.name,
        "num_images": len(images), "pre_rotate": pre_rotate, "seed": seed,
        "view_elements": [element_name(group, j) for j in range(order)],
        "uniform_weight": 1.0 / order,
        "win_fraction": [float((winners == j).double().mean()) for j in range(order)],
        "mean_weight": weights.mean(0).tolist(),
        "relative_win_fraction": [float((relative[rows, winners] == r).double().mean()) for r in range(order)],
        "relative_mean_weight": relative_weights.mean(0).tolist(),
        "upright_win_fraction": float((winners == upright_view).double().mean()),
        "upright_mean_weight": float(weights[rows, upright_view].mean()),
        # 1/|G| when the weights are uniform (then "winning" is a tie broken by group order)
        "mean_winning_weight": float(weights.max(1).values.mean()),
        "accuracy": float((predicted == labels).double().mean()),
        "per_image": [{"label": int(labels[i]), "predicted": int(predicted[i]),
                       "pre_rotation_deg": 90 * int(turns[i]), "upright_view": int(upright_view[i]),
                       "weights": weights[i].tolist()} for i in range(len(images))],
    }


def plot_view_weights(model: LoadedModel, images: torch.Tensor, labels: torch.Tensor, path: str | Path,
                      pre_rotate: bool = True, seed: int = 0) -> tuple[Path, Path, dict]:
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
        panels.append(("transformation relative to the upright digit",
                       stats["relative_win_fraction"], stats["relative_mean_weight"]))
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
    fig.suptitle(f"{model.title()}\n{stats['num_images']} validation digits{rotated}: the upright view wins for "
                 f"{stats['upright_win_fraction']:.0%} (chance: {stats['uniform_weight']:.0%}); mean winning "
                 f"weight {stats['mean_winning_weight']:.3f} (uniform: {stats['uniform_weight']:.3f}); "
                 f"accuracy {stats['accuracy']:.0%}", fontsize=8)
    fig.tight_layout()
    return _save_png(fig, path), json_path, stats


# ---- 5. accuracy vs angle of several runs ----------------------------------------------------------------
def read_robustness_curve(run_dir: str | Path) -> dict:
    """A run's accuracy under rotation: ``{"angles": [...], "accuracy": [...], "num_samples": n}`` from
    ``metrics.json`` (``rotation_robustness``) or, failing that, ``rotation_robustness.csv``."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        stored = json.loads(metrics_path.read_text()).get("rotation_robustness")
        if isinstance(stored, dict) and stored.get("angles") and stored.get("accuracy"):
            return {"angles": list(stored["angles"]), "accuracy": list(stored["accuracy"]),
                    "num_samples": stored.get("num_samples")}
    csv_path = run_dir / "rotation_robustness.csv"
    if csv_path.is_file():
        import csv

        with csv_path.open() as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            return {"angles": [float(r["angle_deg"]) for r in rows], "accuracy": [float(r["accuracy"]) for r in rows],
                    "num_samples": int(float(rows[0]["num_samples"]))}
    raise FileNotFoundError(f"{run_dir} has no rotation robustness results (metrics.json 'rotation_robustness' or "
                            "rotation_robustness.csv); is it a completed train.py run directory?")


def describe_run_config(run_dir: str | Path) -> Optional[str]:
    """The model of a run from its ``config_resolved.yaml`` (``ViT``, ``GE-ViT p4 k=5``, ``post-hoc lambda
    c4 (aggregator_only)``, ...), or None without one."""
    path = Path(run_dir) / "config_resolved.yaml"
    if not path.is_file():
        return None
    import yaml

    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    target = str(model.get("_target_", "")).rsplit(".", 1)[-1]
    if target == "ImageClassifier":
        net = str((model.get("net") or {}).get("_target_", "")).rsplit(".", 1)[-1]
        return "ViT" if net == "VisionTransformer" else net or target
    if target == "GroupTransformerClassifier":
        name = "GE-ViT" if model.get("encoding", "gevit") == "gevit" else "GSA-Nets"
        return f"{name} {model.get('group')} k={model.get('patch_size')}"
    if target == "PostHocClassifier":
        aggregator = (model.get("aggregator") or {}).get("name")
        return f"post-hoc {aggregator} {model.get('group')} ({model.get('regime')})"
    return target or None


def run_label(run_dir: str | Path) -> str:
    """``<run directory name>: <model>`` (the model from the run's config when it has one)."""
    run_dir = Path(run_dir)
    described = describe_run_config(run_dir)
    return f"{run_dir.name}: {described}" if described else run_dir.name


def plot_robustness_comparison(runs: dict[str, str | Path] | Sequence[str | Path], path: str | Path,
                               title: str = "Test accuracy under rotation") -> tuple[Path, dict]:
    """One accuracy-vs-angle figure for several runs (``{label: run_dir}`` or run dirs, labelled by
    :func:`run_label`), drawn by :func:`lightning_modules.callbacks.plot_rotation_robustness`.
    Returns the PNG path and the curves ``{label: {"angles", "accuracy", "num_samples", "run_dir"}}``."""
    labelled = runs.items() if isinstance(runs, dict) else [(run_label(r), r) for r in runs]
    curves: dict = {}
    for label, run_dir in labelled:
        curve = read_robustness_curve(run_dir)
        name = f"{label} (n={curve['num_samples']})" if curve.get("num_samples") else label
        unique, copy = name, 2
        while unique in curves:
            unique, copy = f"{name} #{copy}", copy + 1
        curves[unique] = {**curve, "run_dir": str(run_dir)}
    if not curves:
        raise ValueError("the robustness comparison needs at least one run directory")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_rotation_robustness(curves, path, title=title)
    return path, curves


# ---- W&B -----------------------------------------------------------------------------------------------
def log_to_wandb(files: Iterable[Path], summary: dict, out_dir: Path, config: Optional[dict] = None) -> bool:
    """Log every PNG as ``wandb.Image`` and every GIF as ``wandb.Video(format="gif")``, and the scalar
    numbers of ``summary``, to project ``gevit`` (job_type ``visualize``). Offline when no credentials
    are found; ``WANDB_MODE`` (online, offline, disabled) always wins. Never fails the command: on any
    W&B problem it warns and the files stay where they are. Returns whether a run was logged."""
    try:
        import wandb

        from lightning_modules.utils import wandb_should_be_offline

        mode = None if os.environ.get("WANDB_MODE") else ("offline" if wandb_should_be_offline() else "online")
        run = wandb.init(project="gevit", job_type="visualize", dir=str(out_dir), config=config or {}, mode=mode)
        payload = {}
        for file in files:
            file = Path(file)
            if file.suffix == ".gif":
                payload[file.stem] = wandb.Video(str(file), format="gif")
            elif file.suffix == ".png":
                payload[file.stem] = wandb.Image(str(file), caption=file.name)
        run.log(payload)
        run.summary.update(_scalars(summary))
        run.finish()
        return True
    except Exception as err:  # W&B is optional here: the figures are already on disk
        log.warning("W&B logging failed (%s: %s); the figures are in %s", type(err).__name__, err, out_dir)
        return False


def _scalars(tree: dict, prefix: str = "") -> dict:
    """Flatten the numbers (not lists) of a nested dict into ``a/b/c`` keys."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


# ---- command line ---------------------------------------------------------------------------------------
COMMANDS = ("rotation-gif", "latents", "attention", "view-weights", "robustness", "all")


def _labelled(value: str) -> tuple[Optional[str], str]:
    """``LABEL=PATH`` -> (LABEL, PATH); a plain ``PATH`` -> (None, PATH), also when the path itself holds
    an ``=`` (Lightning's ``epoch=1-step=94.ckpt``)."""
    label, sep, path = value.partition("=")
    if not sep or not label or Path(value).exists():
        return None, value
    return label, path


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=None,
                        help="output folder (default logs/visualizations/<timestamp>)")
    common.add_argument("--wandb", action="store_true",
                        help="also log the figures to W&B (project gevit; offline without credentials)")
    common.add_argument("--image-index", type=int, default=0, help="index of the digit in the validation split")
    common.add_argument("--seed", type=int, default=0, help="seed of the random pre-rotations (view-weights)")

    checkpoints = argparse.ArgumentParser(add_help=False)
    checkpoints.add_argument("--ckpt", action="append", default=[], metavar="[LABEL=]PATH",
                             help="a checkpoint for the rotation GIF (repeatable; one column each)")
    checkpoints.add_argument("--vit-ckpt", type=Path, help="a ViT checkpoint (rotation GIF, attention)")
    checkpoints.add_argument("--gevit-ckpt", type=Path, help="a GE-ViT checkpoint (rotation GIF, latents, attention)")
    checkpoints.add_argument("--posthoc-ckpt", type=Path, action="append", default=[],
                             help="a post-hoc lambda / equiattention checkpoint (view-weights; repeatable)")

    gif = argparse.ArgumentParser(add_help=False)
    gif.add_argument("--angle-step", type=float, default=10.0, help="degrees between GIF frames (default 10: 36 frames)")
    gif.add_argument("--frame-ms", type=int, default=150, help="duration of one GIF frame in milliseconds")
    latents = argparse.ArgumentParser(add_help=False)
    latents.add_argument("--channel", type=int, action="append", default=None,
                         help="channel shown per layer (one value for all layers, or one per layer); "
                              "default: the channel varying most along the group axis")
    views = argparse.ArgumentParser(add_help=False)
    views.add_argument("--num-images", type=int, default=256, help="validation digits for the view statistics")
    views.add_argument("--no-pre-rotate", dest="pre_rotate", action="store_false",
                       help="keep the digits upright instead of turning each by a random multiple of 90°")
    runs = argparse.ArgumentParser(add_help=False)
    runs.add_argument("--runs", nargs="+", default=[], metavar="[LABEL=]DIR",
                      help="train.py run directories (default for 'all': the runs of the given checkpoints)")

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("rotation-gif", parents=[common, checkpoints, gif], help="rotating digit with predictions")
    sub.add_parser("latents", parents=[common, checkpoints, latents], help="GE-ViT feature maps per layer")
    sub.add_parser("attention", parents=[common, checkpoints], help="GE-ViT and ViT attention maps")
    sub.add_parser("view-weights", parents=[common, checkpoints, views], help="post-hoc view weights")
    sub.add_parser("robustness", parents=[common, runs], help="accuracy vs angle of several runs")
    sub.add_parser("all", parents=[common, checkpoints, gif, latents, views, runs], help="every figure the inputs allow")
    return parser


class _Models:
    """Checkpoints loaded once per command, by path."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, path: str | Path, label: Optional[str] = None) -> LoadedModel:
        key = (str(Path(path).resolve()), label)
        if key not in self._cache:
            self._cache[key] = load_model(path, label)
            check_digit_shape(self._cache[key])
        return self._cache[key]


def _gif_models(args, models: _Models) -> list[LoadedModel]:
    """--ckpt entries, then --vit-ckpt, --gevit-ckpt and every --posthoc-ckpt, each path once."""
    requested = [_labelled(value) for value in args.ckpt]
    requested += [(None, str(p)) for p in (args.vit_ckpt, args.gevit_ckpt, *args.posthoc_ckpt) if p]
    seen, chosen = set(), []
    for label, path in requested:
        if str(Path(path).resolve()) not in seen:
            seen.add(str(Path(path).resolve()))
            chosen.append(models.get(path, label))
    return chosen


def _runs_of(args) -> dict[str, str]:
    """--runs as ``{label: dir}``; for ``all`` without --runs, the run directories of the checkpoints given."""
    runs = {}
    for value in args.runs:
        label, run_dir = _labelled(value)
        runs[label or run_label(run_dir)] = run_dir
    if not runs and args.command == "all":
        paths = [_labelled(v)[1] for v in getattr(args, "ckpt", [])]
        paths += [str(p) for p in (args.vit_ckpt, args.gevit_ckpt, *args.posthoc_ckpt) if p]
        for path in paths:
            run_dir = Path(path).resolve().parent.parent
            if Path(path).resolve().parent.name == "checkpoints" and (
                    (run_dir / "metrics.json").is_file() or (run_dir / "rotation_robustness.csv").is_file()):
                runs.setdefault(run_label(run_dir), str(run_dir))
    return runs


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "model"


def run_command(args) -> dict:
    """Make the figures of ``args.command`` in ``args.out``; returns the summary written to summary.json."""
    out: Path = args.out or Path("logs") / "visualizations" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    command, everything = args.command, args.command == "all"
    models = _Models()
    summary: dict = {"command": command, "files": []}
    files: list[Path] = []
    image, labels = validation_digits(args.image_index, 1)
    label = int(labels[0])
    image_name = f"validation digit #{args.image_index}"
    summary["image"] = {"split": "validation (RotMNIST-mini, upright)", "index": args.image_index, "label": label}
    did_something = False

    if command == "rotation-gif" or everything:
        chosen = _gif_models(args, models)
        if chosen:
            angles = angles_every(args.angle_step)
            probabilities = rotation_predictions(chosen, image, angles)
            files.append(write_rotation_gif(chosen, image, label, angles, out / "rotation.gif", probabilities,
                                            args.frame_ms, image_name))
            files.append(plot_rotation_confidence(chosen, probabilities, label, angles, out / "rotation_confidence.png",
                                                  image_name))
            summary["rotation"] = {m.label: {
                "checkpoint": str(m.path), "angles": angles,
                "predicted": probabilities[m.label].argmax(-1).tolist(),
                "p_true_class": probabilities[m.label][:, label].tolist(),
                "correct_fraction": float((probabilities[m.label].argmax(-1) == label).double().mean())}
                for m in chosen}
            did_something = True
        elif not everything:
            raise SystemExit("rotation-gif needs at least one checkpoint: --ckpt [LABEL=]PATH, --vit-ckpt or --gevit-ckpt")

    if command == "latents" or (everything and args.gevit_ckpt):
        if not args.gevit_ckpt:
            raise SystemExit("latents needs --gevit-ckpt PATH (a GE-ViT checkpoint)")
        gevit = models.get(args.gevit_ckpt, "GE-ViT")
        path, errors = plot_gevit_latents(gevit, image, label, out / "gevit_latents.png", args.channel,
                                          image_name=image_name)
        deviation, _ = plot_gevit_latents(gevit, image, label, out / "gevit_latents_group_deviation.png",
                                          args.channel, subtract_group_mean=True, image_name=image_name)
        files += [path, deviation]
        summary["latents"] = {"checkpoint": str(gevit.path), "equivariance_error_per_layer_and_turn": errors.tolist(),
                              "max_equivariance_error": float(errors.max())}
        did_something = True

    if command == "attention" or (everything and (args.gevit_ckpt or args.vit_ckpt)):
        if not (args.gevit_ckpt or args.vit_ckpt):
            raise SystemExit("attention needs --gevit-ckpt PATH and/or --vit-ckpt PATH")
        if args.gevit_ckpt:
            files.append(plot_gevit_attention(models.get(args.gevit_ckpt, "GE-ViT"), image, label,
                                              out / "gevit_attention.png", image_name))
        if args.vit_ckpt:
            files.append(plot_vit_attention(models.get(args.vit_ckpt, "ViT"), image, label,
                                            out / "vit_attention.png", image_name))
        did_something = True

    if command == "view-weights" or (everything and args.posthoc_ckpt):
        if not args.posthoc_ckpt:
            raise SystemExit("view-weights needs --posthoc-ckpt PATH (a post-hoc lambda or equiattention checkpoint)")
        images, digit_labels = validation_digits(0, args.num_images)
        summary["view_weights"] = {}
        for ckpt in args.posthoc_ckpt:
            model = models.get(ckpt)
            png, json_path, stats = plot_view_weights(model, images, digit_labels,
                                                      out / f"view_weights_{_slug(model.label)}.png",
                                                      pre_rotate=args.pre_rotate, seed=args.seed)
            files += [png, json_path]
            summary["view_weights"][model.label] = {k: v for k, v in stats.items() if k != "per_image"}
        did_something = True

    if command == "robustness" or everything:
        runs = _runs_of(args)
        if runs:
            path, curves = plot_robustness_comparison(runs, out / "rotation_robustness_comparison.png")
            files.append(path)
            summary["robustness"] = curves
            did_something = True
        elif not everything:
            raise SystemExit("robustness needs --runs DIR [LABEL=DIR ...] (train.py run directories)")

    if not did_something:
        raise SystemExit("all: nothing to draw; give --vit-ckpt, --gevit-ckpt, --posthoc-ckpt, --ckpt or --runs")
    summary["files"] = [str(f) for f in files]
    if args.wandb:
        summary["wandb_logged"] = log_to_wandb([f for f in files if f.suffix in (".png", ".gif")], summary, out,
                                               config={k: str(v) for k, v in vars(args).items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = build_parser().parse_args(argv)
    try:
        summary = run_command(args)
    except (ValueError, FileNotFoundError, IndexError) as err:  # wrong or missing inputs: one message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    for file in summary["files"]:
        print(file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
