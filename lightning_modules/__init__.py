"""LightningModules: a network joined to its loss, metrics and optimisation (no data set knowledge)."""
from lightning_modules.base import BaseClassifierModule, NonFiniteLossError
from lightning_modules.classifier import ImageClassifier

__all__ = ["BaseClassifierModule", "ImageClassifier", "NonFiniteLossError"]
