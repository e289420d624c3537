"""gevit: rotation-equivariant image classification with attention models (plain torch + escnn).

One import gives a notebook everything it needs::

    import gevit
    net = gevit.create_model("vit", num_classes=10)
    logits = net(images)          # (B, 1, 28, 28) -> (B, 10)
"""
from gevit import models
from gevit.models import VisionTransformer
from gevit.registry import create_model, list_models, register_model
from gevit.rotations import rotate

__all__ = ["models", "VisionTransformer", "create_model", "list_models", "register_model", "rotate"]
__version__ = "0.1.0"
