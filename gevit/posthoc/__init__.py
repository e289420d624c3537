"""Post-hoc invariance: wrap any trained classifier so that its prediction is invariant to a group of input
transformations (plain torch; the Lightning side is ``lightning_modules.PostHocClassifier``).

    from gevit.posthoc import PostHocInvariant, build_backbone
    backbone = build_backbone("checkpoint", num_classes=10, in_channels=1, image_size=28,
                              ckpt_path="logs/.../checkpoints/best.ckpt")
    model = PostHocInvariant(backbone, "c4", "mean").eval()
    logits = model(images)                                  # (B, 1, 28, 28) -> (B, 10)
"""
from gevit.posthoc.aggregators import Aggregator, build_aggregator, list_aggregators, register_aggregator
from gevit.posthoc.backbones import (BACKBONE_SOURCES, Backbone, TimmStyleBackbone, TorchvisionResNetBackbone,
                                     adapt, build_backbone, instantiate_config, network_from_checkpoint,
                                     torchvision_resnet)
from gevit.posthoc.views import PADDINGS, GroupViews, disk_mask
from gevit.posthoc.wrapper import REGIMES, PostHocInvariant

__all__ = [
    "Aggregator", "build_aggregator", "list_aggregators", "register_aggregator",
    "BACKBONE_SOURCES", "Backbone", "TimmStyleBackbone", "TorchvisionResNetBackbone", "adapt", "build_backbone",
    "instantiate_config", "network_from_checkpoint", "torchvision_resnet",
    "PADDINGS", "GroupViews", "disk_mask", "REGIMES", "PostHocInvariant",
]
