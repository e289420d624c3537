"""A name -> constructor registry, so that configs, notebooks and post-hoc wrappers can build any
backbone by name: ``gevit.create_model("vit", num_classes=10)``."""

from __future__ import annotations

from typing import Callable, Dict

import torch.nn as nn

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator registering a constructor under ``name`` (names are unique)."""

    def decorator(fn: Callable[..., nn.Module]):
        if name in _MODELS and _MODELS[name] is not fn:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return decorator


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)


def list_models() -> list[str]:
    return sorted(_MODELS)
