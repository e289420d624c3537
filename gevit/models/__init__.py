"""Networks of gevit. Importing this package registers every model with :mod:`gevit.registry`."""
from gevit.models.group_transformer import GroupTransformer, convert_official_state_dict, load_official_weights
from gevit.models.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer, convert_peer_vit_state_dict
from gevit.models.eqcvt import CvT, EqCvT, SymmetricConv2d

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer", "convert_peer_vit_state_dict"]
from gevit.models.hybrid import HybridViT, SymmetricPatchEmbed  # noqa: E402,F401
