"""gevit: rotation-equivariant image classification with attention models (plain torch + escnn).

One import gives a notebook everything it needs::

    import gevit
    net = gevit.models.GroupTransformer(group="p4", attention_window=5)   # or gevit.models.HybridViT, EqCvT, ...
    logits = net(images)          # (B, 1, 28, 28) -> (B, 10)

Configs build the same classes through their ``_target_`` (``conf/model/*.yaml``, chosen with ``model=NAME``).
"""

from gevit import openmp  # isort: skip  (first: sets OpenMP's wait policy before anything imports torch)
from gevit import groups, models
from gevit.models import VisionTransformer
from gevit.rotations import rotate

__all__ = ["groups", "models", "openmp", "VisionTransformer", "rotate"]
__version__ = "0.1.0"
