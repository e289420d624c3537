"""The aggregator interface and its registry.

An aggregator combines the |G| per-view outputs of each image into one, in a way that does not depend on
the order of the views: transforming the input by a group element only permutes the views, so a
permutation-invariant aggregator makes the wrapped classifier invariant. Its ``level`` says what it
combines:

- ``embedding``: pre-logits embeddings (B, |G|, D) -> (B, D), followed by the backbone's head;
- ``logits``: per-view logits (B, |G|, K) -> logits (B, K);
- ``spatial``: view weights from the embeddings (B, |G|, D), applied to the spatial feature maps
  (B, |G|, C, h, w) after ``g_i^-1`` has been applied to view ``i``; the combined map (B, C, h, w) goes
  through the backbone's pooling and head.
"""
from __future__ import annotations

from typing import Callable, Dict, Type

import torch.nn as nn

LEVELS = ("embedding", "logits", "spatial")

_AGGREGATORS: Dict[str, Type["Aggregator"]] = {}


class Aggregator(nn.Module):
    """Base class: ``forward`` maps (B, |G|, ...) to (B, ...), invariantly under permutations of the views.

    Subclasses set ``level`` (see the module docstring) and are built by :func:`build_aggregator` through
    :meth:`create`, which receives the backbone's facts (``embed_dim``, ``spatial_features``) and the
    aggregator's own options.
    """

    name: str = ""
    level: str = "embedding"

    @classmethod
    def create(cls, embed_dim: int, spatial_features: bool, **options) -> "Aggregator":
        """Build for a backbone with ``embed_dim``-d embeddings; parameter-free aggregators ignore both facts."""
        return cls(**options)

    @property
    def learned(self) -> bool:
        """True when the aggregator has parameters (which must be trained before it means anything)."""
        return any(True for _ in self.parameters())

    def extra_repr(self) -> str:
        return f"level={self.level}"


def register_aggregator(name: str) -> Callable[[Type[Aggregator]], Type[Aggregator]]:
    """Class decorator registering an aggregator under ``name`` (the name used in configs)."""

    def decorator(cls: Type[Aggregator]) -> Type[Aggregator]:
        if name in _AGGREGATORS and _AGGREGATORS[name] is not cls:
            raise ValueError(f"an aggregator named {name!r} is already registered")
        cls.name = name
        _AGGREGATORS[name] = cls
        return cls

    return decorator


def build_aggregator(name: str, embed_dim: int, spatial_features: bool = False, **options) -> Aggregator:
    """The aggregator ``name`` with ``options``, for a backbone with ``embed_dim``-d embeddings (and spatial
    feature maps when ``spatial_features``)."""
    if name not in _AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(list_aggregators())}")
    aggregator = _AGGREGATORS[name].create(embed_dim=embed_dim, spatial_features=spatial_features, **options)
    if aggregator.level not in LEVELS:
        raise ValueError(f"aggregator {name!r} has level {aggregator.level!r}, not one of {LEVELS}")
    return aggregator


def list_aggregators() -> list[str]:
    return sorted(_AGGREGATORS)
