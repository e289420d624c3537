"""gevit: rotation-equivariant image classification with attention models (plain torch + escnn).

One import gives a notebook everything it needs::

    import gevit
    net = gevit.models.GroupTransformer(group="p4", attention_window=5)   # or gevit.create_model("gevit", ...)
    logits = net(images)          # (B, 1, 28, 28) -> (B, 10)

Configs build the same classes through their ``_target_`` (``conf/model/*.yaml``); :func:`create_model` is
the by-name shortcut for notebooks and scripts.
"""

from gevit import openmp  # isort: skip  (first: sets OpenMP's wait policy before anything imports torch)
from gevit import groups, models
from gevit.models import VisionTransformer
from gevit.registry import create_model, list_models, register_model
from gevit.rotations import rotate

__all__ = ["groups", "models", "openmp", "VisionTransformer", "create_model", "list_models", "register_model", "rotate"]
__version__ = "0.1.0"
