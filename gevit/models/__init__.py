"""Networks of gevit. Importing this package registers every model with :mod:`gevit.registry`."""
from gevit.models.vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer, convert_peer_vit_state_dict

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer", "convert_peer_vit_state_dict"]
