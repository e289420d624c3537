"""Networks of gevit (one module per family), each a class built in a notebook as ``gevit.models.HybridViT(...)``
and by a config through its ``_target_`` (``conf/model/*.yaml``)."""

from gevit.models.eqcvt import CvT, EqCvT, SymmetricConv2d
from gevit.models.group_transformer import GroupTransformer, convert_official_state_dict, load_official_weights
from gevit.models.hybrid import HybridViT, SymmetricPatchEmbed
from gevit.models.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer, convert_peer_vit_state_dict

__all__ = [
    "Attention",
    "Block",
    "CvT",
    "EqCvT",
    "GroupTransformer",
    "HybridViT",
    "Mlp",
    "PatchEmbed",
    "SymmetricConv2d",
    "SymmetricPatchEmbed",
    "VisionTransformer",
    "convert_official_state_dict",
    "convert_peer_vit_state_dict",
    "load_official_weights",
]
