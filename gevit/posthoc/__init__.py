"""Post-hoc invariance: wrap any trained classifier so that its prediction is invariant to a group of input
transformations (plain torch; the Lightning side is ``lightning_modules.PostHocClassifier``).

    from gevit.posthoc import MeanAggregator, PostHocInvariant, vit_backbone
    backbone = vit_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path="RUN/checkpoints/best.ckpt")
    model = PostHocInvariant(backbone, "p4", MeanAggregator()).eval()
    logits = model(images)                                  # (B, 1, 28, 28) -> (B, 10)
"""

from gevit.posthoc.aggregators import *  # noqa: F401,F403
from gevit.posthoc.aggregators import __all__ as _aggregators
from gevit.posthoc.backbones import (
    Backbone,
    TimmStyleBackbone,
    TorchvisionResNetBackbone,
    adapt,
    check_backbone,
    peer_vit_backbone,
    resnet_backbone,
    timm_backbone,
    torchvision_resnet,
    vit_backbone,
)
from gevit.posthoc.canonicalization import (
    Canonicalizer,
    CanonicalizerInput,
    DiscreteCanonicalization,
    LearnedCanonicalization,
    OrientationNet,
)
from gevit.posthoc.canonicalization_optimized import OptimizedCanonicalization, VectorNet
from gevit.posthoc.canonicalization_steerable import SteerableCanonicalization, SteerableOrientationNet
from gevit.posthoc.views import PADDINGS, GroupViews, disk_mask
from gevit.posthoc.wrapper import REGIMES, SPATIAL_POOLINGS, PostHocInvariant

__all__ = [
    *_aggregators,
    "Backbone",
    "TimmStyleBackbone",
    "TorchvisionResNetBackbone",
    "adapt",
    "check_backbone",
    "peer_vit_backbone",
    "resnet_backbone",
    "timm_backbone",
    "torchvision_resnet",
    "vit_backbone",
    "Canonicalizer",
    "CanonicalizerInput",
    "DiscreteCanonicalization",
    "LearnedCanonicalization",
    "OptimizedCanonicalization",
    "OrientationNet",
    "SteerableCanonicalization",
    "SteerableOrientationNet",
    "VectorNet",
    "PADDINGS",
    "GroupViews",
    "disk_mask",
    "REGIMES",
    "SPATIAL_POOLINGS",
    "PostHocInvariant",
]
