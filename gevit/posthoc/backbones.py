"""Backbones for the post-hoc wrappers: one adapter contract, and builders for every weight source.

The contract (:class:`Backbone`) that every backbone satisfies:

- ``forward_features(images (N, C, H, W))`` -> the last features: tokens (N, T, D) for a ViT, a spatial
  map (N, C', h, w) for a CNN;
- ``forward_head(features, pre_logits=True)`` -> the embedding before the classifier (N, D), i.e. the
  pooling / class-token read-out; with ``pre_logits=False`` also the classifier -> logits (N, K);
- ``head``: the classifier (N, D) -> (N, K), the part that the ``mlp`` regime trains;
- ``embed_dim`` (D), ``spatial_features`` (True when ``forward_features`` gives an NCHW map on which the
  group acts by rotating / flipping its spatial axes), ``weights_source`` (where the weights came from).

Sources (:func:`build_backbone`): ``vit`` (this project's ViT), ``peer_vit`` (the post-hoc experiments'
original ViT checkpoint), ``timm`` (any timm model), ``resnet`` (torchvision's ResNets, ResNet-50 by
default) and ``checkpoint`` (any
network trained by this framework; its architecture is rebuilt from the checkpoint, without Hydra).
``ckpt_path`` always names the trained backbone's weights: a checkpoint of an earlier run of this
framework, or for ``peer_vit`` the peer state_dict. ``weights`` names initial pretrained weights
(a local file, never downloaded unless asked for).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
import torchvision

from gevit.models.vit import VisionTransformer, convert_peer_vit_state_dict

RANDOM_INIT = "random initialisation"
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class Backbone(nn.Module):
    """The adapter contract (see the module docstring); ``forward`` gives logits (N, K)."""

    embed_dim: int
    spatial_features: bool
    weights_source: str

    @property
    def head(self) -> nn.Module:
        raise NotImplementedError

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, spatial_features={self.spatial_features}, weights={self.weights_source}"


class TimmStyleBackbone(Backbone):
    """A model with timm's API — ``forward_features``, ``forward_head(x, pre_logits)`` and a classifier
    (``get_classifier()`` or ``head``): every timm model and :class:`gevit.models.VisionTransformer`.

    Whether its features are a spatial NCHW map is found once, from a dry run on one blank image.
    """

    def __init__(self, model: nn.Module, in_channels: int, image_size: int, weights_source: str = RANDOM_INIT):
        super().__init__()
        self.model = model
        self.weights_source = weights_source
        self.embed_dim = (getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
                          or model.embed_dim)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            features = model.forward_features(torch.zeros(1, in_channels, image_size, image_size))
        model.train(was_training)
        self.spatial_features = features.ndim == 4 and getattr(model, "output_fmt", "NCHW") == "NCHW"

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier() if hasattr(self.model, "get_classifier") else self.model.head

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        embedding = self.model.forward_head(features, pre_logits=True)
        return embedding if pre_logits else self.head(embedding)


class TorchvisionResNetBackbone(Backbone):
    """A torchvision ResNet: features = the ``layer4`` map (N, C', h, w); embedding = global average
    pooling (N, C'); head = ``fc``."""

    spatial_features = True

    def __init__(self, model: torchvision.models.ResNet, weights_source: str = RANDOM_INIT):
        super().__init__()
        self.model = model
        self.weights_source = weights_source
        self.embed_dim = model.fc.in_features

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
    if isinstance(model, torchvision.models.ResNet):
        return TorchvisionResNetBackbone(model, weights_source)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return TimmStyleBackbone(model, in_channels, image_size, weights_source)
    raise TypeError(f"no backbone adapter for {type(model).__name__}: a backbone needs forward_features / "
                    "forward_head(x, pre_logits=True) / a classifier (timm's API), or to be a torchvision ResNet")


# ---- weights ----------------------------------------------------------------------------------------
def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def read_framework_checkpoint(ckpt_path: str | Path) -> dict:
    """Load a checkpoint written by ``train.py`` (Lightning format with ``state_dict`` and, since the
    model config is stored, ``gevit_model_config``)."""
    path = _existing_file(ckpt_path, "backbone checkpoint")
    # A Lightning checkpoint holds plain Python objects (loop and callback states) besides tensors.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or not any(k.startswith("net.") for k in checkpoint.get("state_dict", {})):
        raise ValueError(f"{path} is not a checkpoint of this framework's train.py (expected a 'state_dict' with "
                         "'net.' entries); for the post-hoc experiments' original ViT use model/backbone=peer_vit")
    return checkpoint


def net_state_dict(checkpoint: dict) -> dict:
    """The ``net.`` entries of a Lightning checkpoint's state_dict, without the prefix."""
    return {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def load_framework_weights(model: nn.Module, ckpt_path: str | Path) -> None:
    """Load the network weights of a ``train.py`` checkpoint into ``model`` (strictly)."""
    try:
        model.load_state_dict(net_state_dict(read_framework_checkpoint(ckpt_path)))
    except RuntimeError as err:
        raise ValueError(f"the network in {ckpt_path} does not match the configured backbone architecture; "
                         f"use model/backbone=checkpoint to take the architecture from the checkpoint.\n{err}") from err


# ---- rebuilding a network from a stored config, without Hydra -----------------------------------------
# Arguments that fetch *initial* weights: a checkpoint already holds the trained ones.
_INITIAL_WEIGHT_ARGS = {"pretrained": False, "weights": None}


def import_target(path: str) -> Callable[..., Any]:
    """``"package.module.Name"`` -> the object ``Name`` of ``package.module``."""
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"cannot import {path!r} (the _target_ of the stored network config): {err}") from err


def instantiate_config(node: Any) -> Any:
    """Build the objects described by a resolved config (dicts with ``_target_``, nested), like Hydra's
    ``instantiate`` for plain nodes. Keys starting with ``_`` other than ``_target_`` are ignored."""
    if isinstance(node, dict):
        values = {k: instantiate_config(v) for k, v in node.items() if not k.startswith("_")}
        return import_target(node["_target_"])(**values) if "_target_" in node else values
    if isinstance(node, (list, tuple)):
        return [instantiate_config(v) for v in node]
    return node


def network_from_checkpoint(ckpt_path: str | Path) -> nn.Module:
    """Rebuild the network of a ``train.py`` checkpoint from ``gevit_model_config['net']`` and load its
    weights. Arguments that would fetch initial weights (``pretrained``, ``weights``) are disabled."""
    checkpoint = read_framework_checkpoint(ckpt_path)
    config = checkpoint.get("gevit_model_config") or {}
    if not isinstance(config.get("net"), dict) or "_target_" not in config["net"]:
        raise ValueError(f"{ckpt_path} stores no network config (gevit_model_config['net'] with a _target_); "
                         "it was not written by a train.py run of a single network (model=vit or similar)")
    net_config = dict(config["net"])
    net_config.update({k: v for k, v in _INITIAL_WEIGHT_ARGS.items() if k in net_config})
    model = instantiate_config(net_config)
    model.load_state_dict(net_state_dict(checkpoint))
    return model


# ---- networks -----------------------------------------------------------------------------------------
def torchvision_resnet(arch: str = "resnet50", num_classes: int = 1000, in_channels: int = 3,
                       weights: Optional[str] = None) -> nn.Module:
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
        state = torch.load(_existing_file(weights, f"{arch} weights file"), map_location="cpu", weights_only=True)
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
def vit_backbone(num_classes: int, in_channels: int, image_size: int, ckpt_path: Optional[str] = None,
                 **architecture) -> Backbone:
    """This project's ViT with ``architecture`` (see :class:`gevit.models.VisionTransformer`); weights from
    ``ckpt_path`` (a ``train.py`` checkpoint of a ViT of the same architecture) or random."""
    model = VisionTransformer(image_size=image_size, in_channels=in_channels, num_classes=num_classes, **architecture)
    if ckpt_path:
        load_framework_weights(model, ckpt_path)
    return adapt(model, in_channels, image_size, str(ckpt_path) if ckpt_path else RANDOM_INIT)


def peer_vit_backbone(num_classes: int, in_channels: int, image_size: int, ckpt_path: str,
                      **architecture) -> Backbone:
    """The GEVit-DL2-Project post-hoc ViT: its state_dict file ``ckpt_path`` converted with
    :func:`gevit.models.convert_peer_vit_state_dict` into this project's ViT."""
    model = VisionTransformer(image_size=image_size, in_channels=in_channels, num_classes=num_classes, **architecture)
    state = torch.load(_existing_file(ckpt_path, "peer ViT state_dict"), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_peer_vit_state_dict(state))
    return adapt(model, in_channels, image_size, str(ckpt_path))


def timm_backbone(num_classes: int, in_channels: int, image_size: int, name: str, weights: Optional[str] = None,
                  ckpt_path: Optional[str] = None, model_kwargs: Optional[dict] = None) -> Backbone:
    """``timm.create_model(name, pretrained=False, ...)``; initial weights only from the local file ``weights``
    (timm adapts its classifier and input channels), trained weights from a ``train.py`` ``ckpt_path``.
    ``model_kwargs`` go to ``create_model`` (e.g. ``img_size`` for a ViT)."""
    import timm

    overlay = {"file": str(_existing_file(weights, "timm weights file"))} if weights else None
    model = timm.create_model(name, pretrained=overlay is not None, pretrained_cfg_overlay=overlay,
                              num_classes=num_classes, in_chans=in_channels, **(model_kwargs or {}))
    if ckpt_path:
        load_framework_weights(model, ckpt_path)
    source = str(ckpt_path) if ckpt_path else str(weights) if weights else RANDOM_INIT
    return adapt(model, in_channels, image_size, source)


def resnet_backbone(num_classes: int, in_channels: int, image_size: int, arch: str = "resnet50",
                    weights: Optional[str] = None, ckpt_path: Optional[str] = None) -> Backbone:
    """A torchvision ResNet (:func:`torchvision_resnet`); trained weights from a ``train.py`` ``ckpt_path``
    (e.g. the ``resnet50_pcam`` stage 1)."""
    model = torchvision_resnet(arch, num_classes, in_channels, None if ckpt_path else weights)
    if ckpt_path:
        load_framework_weights(model, ckpt_path)
    source = str(ckpt_path) if ckpt_path else str(weights) if weights else RANDOM_INIT
    return adapt(model, in_channels, image_size, source)


def checkpoint_backbone(num_classes: int, in_channels: int, image_size: int, ckpt_path: str) -> Backbone:
    """Architecture and weights of the network in a ``train.py`` checkpoint (:func:`network_from_checkpoint`)."""
    if not ckpt_path:
        raise ValueError("model/backbone=checkpoint needs model.backbone.ckpt_path=RUN/checkpoints/best-....ckpt")
    return adapt(network_from_checkpoint(ckpt_path), in_channels, image_size, str(ckpt_path))


BACKBONE_SOURCES: Dict[str, Callable[..., Backbone]] = {
    "vit": vit_backbone,
    "peer_vit": peer_vit_backbone,
    "timm": timm_backbone,
    "resnet": resnet_backbone,
    "checkpoint": checkpoint_backbone,
}


def build_backbone(source: str, num_classes: int, in_channels: int, image_size: int, **options) -> Backbone:
    """The backbone from ``source`` (``vit``, ``peer_vit``, ``timm``, ``resnet``, ``checkpoint``) for
    (``in_channels``, ``image_size``, ``image_size``) images and ``num_classes`` classes.

    One dry run on a blank image checks that it accepts such images and gives ``num_classes`` logits.
    """
    if source not in BACKBONE_SOURCES:
        raise ValueError(f"unknown backbone source {source!r}; choose one of {', '.join(BACKBONE_SOURCES)}")
    backbone = BACKBONE_SOURCES[source](num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                        **options)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        logits = backbone(torch.zeros(1, in_channels, image_size, image_size))
    backbone.train(was_training)
    if logits.shape != (1, num_classes):
        raise ValueError(f"the {source} backbone ({backbone.weights_source}) gives logits of shape "
                         f"{tuple(logits.shape)} for one image, but the data has {num_classes} classes")
    return backbone
