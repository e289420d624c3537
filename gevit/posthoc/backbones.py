"""Backbones for the post-hoc wrappers: one adapter contract, and one builder per weight source.

The contract (:class:`Backbone`) that every backbone satisfies:

- ``forward_features(images (N, C, H, W))`` -> the last features: tokens (N, T, D) for a ViT, a spatial
  map (N, C', h, w) for a CNN;
- ``forward_head(features, pre_logits=True)`` -> the embedding before the classifier (N, D), i.e. the
  pooling / class-token read-out; with ``pre_logits=False`` also the classifier -> logits (N, K);
- ``head``: the classifier (N, D) -> (N, K); ``head_modules``: the whole classification head, what the
  ``mlp`` regime trains (the final norm and the classifier of a ViT);
- ``embed_dim`` (D), ``in_channels``, ``spatial_features`` (True when ``forward_features`` gives an NCHW map
  on which the group acts by rotating / flipping its spatial axes), ``invariant_pooling`` (True only
  where the map -> embedding read-out is known to be invariant to rot90 / flips of the map: global
  average / max pooling; False for attention pooling with a positional embedding, flattening, ...),
  ``weights_source`` (where the weights came from).

Builders (each the ``_target_`` of a ``conf/model/backbone/`` yaml, with ``_partial_: true``: the data's
``num_classes``, ``in_channels`` and ``image_size`` are passed when the wrapper is built):
:func:`vit_backbone` (this project's ViT), :func:`peer_vit_backbone` (the post-hoc experiments' original
ViT checkpoint), :func:`timm_backbone` (any timm model), :func:`resnet_backbone` (torchvision's ResNets);
the network of a ``train.py`` checkpoint is ``runkit.checkpoint_loading.checkpoint_backbone`` (it rebuilds the
stored config, which is run plumbing). Every file is read by :func:`gevit.checkpoint_io.read_checkpoint`. ``ckpt_path`` always names the trained backbone's weights; ``weights``
names initial pretrained weights (a local file, never downloaded unless asked for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torchvision

from gevit.checkpoint_io import ForeignCheckpointError, read_checkpoint
from gevit.models.vit import VisionTransformer, convert_peer_vit_state_dict

RANDOM_INIT = "random initialisation"
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


# Readouts whose output does not change when the spatial map is rotated by 90 degrees or flipped.
_INVARIANT_POOL_TYPES = ("avg", "max", "avgmax", "catavgmax")
# Names of a timm model's final norms, part of its classification head (the ``mlp`` regime trains them).
_HEAD_NORMS = ("norm", "fc_norm", "head_norm")
# timm.create_model keywords that would make timm read weight files itself (with its own loader).
_TIMM_LOADING_KWARGS = {"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay"}


class Backbone(nn.Module):
    """The adapter contract (see the module docstring); ``forward`` gives logits (N, K)."""

    embed_dim: int
    in_channels: int
    spatial_features: bool
    invariant_pooling: bool = False
    weights_source: str

    @property
    def head(self) -> nn.Module:
        raise NotImplementedError

    @property
    def head_modules(self) -> list[nn.Module]:
        return [self.head]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, spatial_features={self.spatial_features}, "
            f"invariant_pooling={self.invariant_pooling}, weights={self.weights_source}"
        )


def _timm_pooling_is_invariant(model: nn.Module) -> bool:
    """True for a timm CNN read out by global average / max pooling (``SelectAdaptivePool2d``) and no
    attention pooling; anything else (e.g. ``resnet50_clip``'s attention pool with a positional embedding)
    is not trusted to be invariant."""
    from timm.layers import SelectAdaptivePool2d

    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d):
        pool = getattr(getattr(model, "head", None), "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d) or pool.pool_type not in _INVARIANT_POOL_TYPES:
        return False
    return not any(
        "attention" in type(m).__name__.lower() or "attnpool" in type(m).__name__.lower() for m in model.modules()
    )


class TimmStyleBackbone(Backbone):
    """A model with timm's API — ``forward_features``, ``forward_head(x, pre_logits)`` and a classifier
    (``get_classifier()`` or ``head``): every timm model and :class:`gevit.models.VisionTransformer`.

    Whether its features are a spatial NCHW map is found once, from a dry run on one blank image; the
    pooling counts as invariant only for timm's global average / max pooling (:func:`_timm_pooling_is_invariant`).
    """

    def __init__(self, model: nn.Module, in_channels: int, image_size: int, weights_source: str = RANDOM_INIT):
        super().__init__()
        self.model = model
        self.in_channels = in_channels
        self.weights_source = weights_source
        self.embed_dim = (
            getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None) or model.embed_dim
        )
        was_training = model.training
        model.eval()
        with torch.no_grad():
            features = model.forward_features(torch.zeros(1, in_channels, image_size, image_size))
        model.train(was_training)
        self.spatial_features = features.ndim == 4 and getattr(model, "output_fmt", "NCHW") == "NCHW"
        self.invariant_pooling = self.spatial_features and _timm_pooling_is_invariant(model)

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier() if hasattr(self.model, "get_classifier") else self.model.head

    @property
    def head_modules(self) -> list[nn.Module]:
        """The classifier and the model's final norms (a timm ViT's ``norm`` / ``fc_norm``: its LN + Linear
        head); this project's ViT keeps its LayerNorm inside ``head``."""
        norms = [
            getattr(self.model, name) for name in _HEAD_NORMS if isinstance(getattr(self.model, name, None), nn.Module)
        ]
        return [m for m in norms if any(True for _ in m.parameters())] + [self.head]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        embedding = self.model.forward_head(features, pre_logits=True)
        return embedding if pre_logits else self.head(embedding)


class TorchvisionResNetBackbone(Backbone):
    """A torchvision ResNet: features = the ``layer4`` map (N, C', h, w); embedding = global average
    pooling (N, C') (invariant); head = ``fc``."""

    spatial_features = True
    invariant_pooling = True

    def __init__(self, model: torchvision.models.ResNet, weights_source: str = RANDOM_INIT):
        super().__init__()
        self.model = model
        self.weights_source = weights_source
        self.embed_dim = model.fc.in_features
        self.in_channels = model.conv1.in_channels

    @property
    def head(self) -> nn.Module:
        return self.model.fc

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(images))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        embedding = torch.flatten(self.model.avgpool(features), 1)
        return embedding if pre_logits else self.head(embedding)


def adapt(model: nn.Module, in_channels: int, image_size: int, weights_source: str = RANDOM_INIT) -> Backbone:
    """Wrap a classifier network in the adapter that fits it."""
    if isinstance(model, Backbone):
        return model
    if isinstance(model, torchvision.models.ResNet):
        return TorchvisionResNetBackbone(model, weights_source)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return TimmStyleBackbone(model, in_channels, image_size, weights_source)
    raise TypeError(
        f"no backbone adapter for {type(model).__name__}: a backbone needs forward_features / "
        "forward_head(x, pre_logits=True) / a classifier (timm's API), or to be a torchvision ResNet"
    )


def check_backbone(backbone: Backbone, num_classes: int, in_channels: int, image_size: int) -> Backbone:
    """One dry run on a blank (in_channels, image_size, image_size) image: the backbone must accept it and
    give ``num_classes`` logits. Returns the backbone."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            logits = backbone(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        backbone.train(was_training)
    if logits.shape != (1, num_classes):
        raise ValueError(
            f"the backbone ({backbone.weights_source}) gives logits of shape {tuple(logits.shape)} "
            f"for one image, but the data has {num_classes} classes"
        )
    return backbone


# ---- weights ----------------------------------------------------------------------------------------
def read_state_dict(path: str | Path, option: str, what: str) -> dict:
    """A plain ``{name: tensor}`` state_dict file (``option`` names where the path came from, for errors)."""
    state = read_checkpoint(path, option=option, what=what)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ForeignCheckpointError(f"{option}={path} is not a state_dict file (a dict of tensors): not a {what}")
    return state


def read_framework_checkpoint(ckpt_path: str | Path, option: str = "model.backbone.ckpt_path") -> dict:
    """Load a checkpoint written by ``train.py`` (Lightning format with ``state_dict`` and, since the
    model config is stored, ``gevit_model_config``)."""
    checkpoint = read_checkpoint(ckpt_path, option=option, what="train.py checkpoint")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(isinstance(k, str) and k.startswith("net.") for k in state):
        raise ForeignCheckpointError(
            f"{option}={ckpt_path} is not a checkpoint of this framework's train.py (expected a 'state_dict' "
            "with 'net.' entries); for the post-hoc experiments' original ViT use model/backbone=peer_vit"
        )
    return checkpoint


def net_state_dict(checkpoint: dict) -> dict:
    """The ``net.`` entries of a Lightning checkpoint's state_dict, without the prefix."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def load_framework_weights(model: nn.Module, ckpt_path: str | Path) -> None:
    """Load the network weights of a ``train.py`` checkpoint into ``model`` (strictly)."""
    try:
        model.load_state_dict(net_state_dict(read_framework_checkpoint(ckpt_path)))
    except RuntimeError as err:
        raise ValueError(
            f"the network in {ckpt_path} does not match the configured backbone architecture; "
            f"use model/backbone=checkpoint to take the architecture from the checkpoint.\n{err}"
        ) from err


# ---- networks -----------------------------------------------------------------------------------------
def torchvision_resnet(
    arch: str = "resnet50", num_classes: int = 1000, in_channels: int = 3, weights: Optional[str] = None
) -> nn.Module:
    """A torchvision ResNet (``arch``: resnet18, resnet34, resnet50, resnet101, resnet152) with
    ``num_classes`` outputs and ``in_channels`` input channels.

    ``weights``: ``None`` (random), a local file with the state_dict of that torchvision ResNet (e.g.
    ``resnet50-11ad3fa6.pth``), or ``"download"`` (torchvision's default ImageNet weights; needs the
    network). A classifier of another size is dropped and re-initialised; for one input channel the
    pretrained first convolution is summed over its RGB channels.
    """
    if arch not in RESNETS:
        raise ValueError(f"unknown torchvision ResNet {arch!r}; choose one of {', '.join(RESNETS)}")
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights is None:
        return model
    if weights == "download":
        state = torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(progress=False)
    else:
        state = read_state_dict(weights, "model.backbone.weights", f"torchvision {arch} weights file")
    if in_channels != 3:
        if in_channels != 1:
            raise ValueError(f"pretrained {arch} weights need 1 or 3 input channels, got {in_channels}")
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    if state["fc.weight"].shape[0] != num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{weights} is not a {arch} state_dict: {err}") from err
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise ValueError(f"{weights} is not a {arch} state_dict (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model


# ---- builders, one per source ---------------------------------------------------------------------
def vit_backbone(
    num_classes: int, in_channels: int, image_size: int, ckpt_path: Optional[str] = None, **architecture
) -> Backbone:
    """This project's ViT with ``architecture`` (see :class:`gevit.models.VisionTransformer`); weights from
    ``ckpt_path`` (a ``train.py`` checkpoint of a ViT of the same architecture) or random."""
    model = VisionTransformer(image_size=image_size, in_channels=in_channels, num_classes=num_classes, **architecture)
    if ckpt_path:
        load_framework_weights(model, ckpt_path)
    return adapt(model, in_channels, image_size, str(ckpt_path) if ckpt_path else RANDOM_INIT)


def peer_vit_backbone(num_classes: int, in_channels: int, image_size: int, ckpt_path: str, **architecture) -> Backbone:
    """The GEVit-DL2-Project post-hoc ViT: its state_dict file ``ckpt_path`` converted with
    :func:`gevit.models.convert_peer_vit_state_dict` into this project's ViT."""
    model = VisionTransformer(image_size=image_size, in_channels=in_channels, num_classes=num_classes, **architecture)
    state = read_state_dict(ckpt_path, "model.backbone.ckpt_path", "peer ViT state_dict")
    model.load_state_dict(convert_peer_vit_state_dict(state))
    return adapt(model, in_channels, image_size, str(ckpt_path))


def timm_backbone(
    num_classes: int,
    in_channels: int,
    image_size: int,
    model_name: str,
    weights: Optional[str] = None,
    ckpt_path: Optional[str] = None,
    model_kwargs: Optional[dict] = None,
) -> Backbone:
    """``timm.create_model(model_name, pretrained=False, ...)``; initial weights only from the local file ``weights``
    (timm adapts its classifier and input channels), trained weights from a ``train.py`` ``ckpt_path``.
    ``model_kwargs`` go to ``create_model`` (e.g. ``img_size`` for a ViT)."""
    import timm

    refused = sorted(set(model_kwargs or {}) & _TIMM_LOADING_KWARGS)
    if refused:
        raise ValueError(
            f"model.backbone.model_kwargs may not set {', '.join(refused)}: weights come from model.backbone.weights "
            "(a local file, read safely) or model.backbone.ckpt_path"
        )
    if weights:
        read_checkpoint(weights, option="model.backbone.weights", what="timm weights file")  # refuse unsafe files
    overlay = {"file": str(Path(weights).expanduser())} if weights else None
    model = timm.create_model(
        model_name,
        pretrained=overlay is not None,
        pretrained_cfg_overlay=overlay,
        num_classes=num_classes,
        in_chans=in_channels,
        **(model_kwargs or {}),
    )
    if ckpt_path:
        load_framework_weights(model, ckpt_path)
    source = str(ckpt_path) if ckpt_path else str(weights) if weights else RANDOM_INIT
    return adapt(model, in_channels, image_size, source)


def resnet_backbone(
    num_classes: int,
    in_channels: int,
    image_size: int,
    arch: str = "resnet50",
    weights: Optional[str] = None,
    ckpt_path: Optional[str] = None,
) -> Backbone:
    """A torchvision ResNet (:func:`torchvision_resnet`); trained weights from a ``train.py`` ``ckpt_path``
    (e.g. the ``resnet50_pcam`` stage 1)."""
    model = torchvision_resnet(arch, num_classes, in_channels, None if ckpt_path else weights)
    if ckpt_path:
        load_framework_weights(model, ckpt_path)
    source = str(ckpt_path) if ckpt_path else str(weights) if weights else RANDOM_INIT
    return adapt(model, in_channels, image_size, source)
