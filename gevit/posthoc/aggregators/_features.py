"""The ``features`` option of the weighting aggregators: combine embeddings, or aligned spatial maps."""

from __future__ import annotations

FEATURES = ("auto", "embedding", "spatial")


def resolve_level(name: str, features: str, spatial_features: bool) -> str:
    """``auto`` -> ``spatial`` when the backbone has NCHW feature maps, else ``embedding``."""
    if features not in FEATURES:
        raise ValueError(f"{name} features must be one of {FEATURES}, got {features!r}")
    if features == "spatial" and not spatial_features:
        raise ValueError(
            f"{name} features=spatial needs a backbone with spatial feature maps (a CNN); this backbone "
            "has none: use features=embedding (or auto)"
        )
    if features == "auto":
        return "spatial" if spatial_features else "embedding"
    return features


def weighted_sum(weights, values):
    """(B, |G|) weights and (B, |G|, ...) values -> (B, ...)."""
    return (weights.reshape(*weights.shape, *([1] * (values.ndim - 2))) * values).sum(dim=1)
