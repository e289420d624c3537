"""LightningModules: a network joined to its loss, metrics and optimisation (no data set knowledge)."""
from lightning_modules.base import BaseClassifierModule, NonFiniteLossError
from lightning_modules.classifier import ImageClassifier
from lightning_modules.group_transformer import GroupTransformerClassifier

__all__ = ["BaseClassifierModule", "GroupTransformerClassifier", "ImageClassifier", "NonFiniteLossError"]
from lightning_modules.posthoc import PostHocClassifier  # noqa: E402,F401
from lightning_modules.hybrid import HybridClassifier  # noqa: E402,F401
