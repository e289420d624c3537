"""LightningModules: a network joined to its loss, metrics and optimisation (no data set knowledge).

Every end-to-end model is an :class:`ImageClassifier` around a ``gevit`` network; the post-hoc wrappers
have :class:`PostHocClassifier`, which adds regimes (what is frozen) on top (imported on first use, so
that end-to-end runs do not load the post-hoc package).
"""

from lightning_modules.base import BaseClassifierModule, NonFiniteLossError
from lightning_modules.classifier import ImageClassifier

__all__ = ["BaseClassifierModule", "ImageClassifier", "NonFiniteLossError", "PostHocClassifier"]


def __getattr__(name: str):
    if name == "PostHocClassifier":
        from lightning_modules.posthoc import PostHocClassifier

        return PostHocClassifier
    raise AttributeError(f"module 'lightning_modules' has no attribute {name!r}")
