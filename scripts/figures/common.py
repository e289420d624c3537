"""What every figure shares: checkpoints loaded for drawing, refusals of the wrong kind, drawing helpers."""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gevit.analysis import ModelFacts, model_facts  # noqa: E402
from runkit.checkpoint_loading import CheckpointError, load_run  # noqa: E402


class CheckpointKindError(CheckpointError):
    """A checkpoint of the wrong kind for a figure (e.g. ``latents`` given a ViT)."""


@dataclass
class LoadedModel:
    """A ``train.py`` checkpoint rebuilt by :func:`runkit.checkpoint_loading.load_run`, with a label for figures.

    ``module(images in [0, 1], (B, C, H, W)) -> logits (B, K)``; ``net`` is the bare network (normalised
    input, ``module.normalize(images)``); ``facts`` says what it is (:func:`gevit.analysis.model_facts`).
    """

    label: str
    path: Path
    module: torch.nn.Module
    config: dict

    @property
    def net(self) -> torch.nn.Module:
        return self.module.net

    @functools.cached_property
    def facts(self) -> ModelFacts:
        return model_facts(self.net)

    @property
    def kind(self) -> str:
        return self.facts.kind

    @property
    def target(self) -> str:
        """The LightningModule class of the stored config."""
        return str(self.config.get("_target_", type(self.module).__name__))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Raw images in [0, 1] -> the network's input."""
        return self.module.normalize(images)

    def description(self) -> str:
        """What the network is, for titles (e.g. ``GE-ViT p4, 3x3 local attention``), with the post-hoc regime."""
        regime = getattr(self.module, "regime", None)
        return f"{self.facts.description} (regime {regime})" if regime else self.facts.description

    def title(self, width: Optional[int] = None) -> str:
        """``label: description`` (wrapped at ``width`` characters) and, on the last line, the checkpoint file."""
        heading = f"{self.label}: {self.description()}"
        return f"{textwrap.fill(heading, width) if width else heading}\n{display_path(self.path)}"

    def require(self, command: str, expected: str, fits: Callable[[ModelFacts], bool]) -> None:
        """Raise one message naming the file and what ``command`` expects unless ``fits(self.facts)``."""
        if not fits(self.facts):
            raise CheckpointKindError(
                f"{command}: {self.path} holds a {self.description()} ({self.target}); expected {expected}"
            )


def load_model(path: str | Path, label: Optional[str] = None) -> LoadedModel:
    """The checkpoint at ``path`` rebuilt in eval mode, labelled ``label`` or by its network (``ViT``, ...)."""
    module, config, path = load_run(path)
    model = LoadedModel(label="", path=path, module=module, config=config)
    model.label = label or model.facts.name
    return model


def check_digit_shape(model: LoadedModel) -> None:
    """The figures draw 1x28x28 digits of the embedded data set; refuse models of other inputs."""
    module = model.module
    if (module.in_channels, module.image_size) != (1, 28):
        raise CheckpointKindError(
            f"{model.path} expects {module.in_channels}x{module.image_size}x{module.image_size} "
            "images; these figures use 1x28x28 digits of the embedded RotMNIST-mini set"
        )


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when below it, else its last three parts (run/checkpoints/file)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.parts[-3:]))


# ---- drawing ---------------------------------------------------------------------------------------------
def figure_rgb(fig) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def show_digit(ax, image: torch.Tensor, title: str = "") -> None:
    """(C, H, W) or (H, W) image in [0, 1] on ``ax``, without ticks."""
    array = image[0] if image.ndim == 3 else image
    ax.imshow(array.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def show_map(ax, values: torch.Tensor, title: str = "", **imshow) -> None:
    """A 2-D map on ``ax``, without ticks."""
    ax.imshow(values.numpy(), **imshow)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def overlay(ax, image: torch.Tensor, heat: torch.Tensor, title: str = "") -> None:
    """A coarse (h, w) map stretched over the (C, H, W) image, half transparent."""
    show_digit(ax, image, title)
    height, width = image.shape[-2:]
    ax.imshow(
        heat.numpy(), cmap="inferno", alpha=0.6, interpolation="nearest", extent=(-0.5, width - 0.5, height - 0.5, -0.5)
    )
