"""GroupTransformer: the GE-ViT / GSA-Nets network (pixel-level group self-attention).

input (B, C, H, W) -> dropout -> LiftingSelfAttention -> Norm -> Act
  (or, with ``lifting=False``, input (B, C, |G|, H, W) functions on the group -> dropout)
  -> [GroupTransformerBlock (+ Norm -> Act if normalize_between_layers)] x block_sizes[i],
     MaxPool(space, 2) between blocks (and after the last if maxpool_after_last_block)
  -> 1x1 map to num_classes -> pool over space -> pool over the group -> logits (B, num_classes)

The final pooling is explicit: the official code **sums over space and takes the max over the group**
(``spatial_pooling="sum", group_pooling="max"``, our default, so official weights compute the official
function), while the papers describe mean pooling; ``mean``/``max`` are available for both axes. All
choices are invariant, so with ``encoding="gevit"`` the logits are exactly invariant under the
90-degree rotations (and mirrors) contained in the group, provided every feature map keeps an even
size before each max-pool (true for the official configurations).

Use it from a notebook with ``gevit.models.GroupTransformer(group="p4", attention_window=5)`` (GSA-Nets:
``encoding="gsanet"``; defaults are the official rotMNIST configuration: 44,428 parameters for p4 with 5x5
neighbourhoods). The official code calls the attention window ``patch_size``; here ``patch_size`` is only
the ViT's patch embedding.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from gevit.checkpoint_io import read_checkpoint
from gevit.groups import get_group
from gevit.layers.blocks import ChannelLinear, GroupTransformerBlock, make_activation, make_norm
from gevit.layers.common import per_item
from gevit.layers.encodings import get_encoding
from gevit.layers.group_attention import LiftingSelfAttention, PositionMLP

log = logging.getLogger(__name__)

SPATIAL_POOLINGS = ("sum", "mean", "max")
GROUP_POOLINGS = ("max", "mean")
POSITION_BIAS_INITS = ("zero", "uniform")


class GroupTransformer(nn.Module):
    """Group self-attention network (see the module docstring).

    Args:
        group: a name of :mod:`gevit.groups` (z2, p4, p8, p12, p16, mz2, p4m, p8m; aliases such as c4 too).
        attention_window: odd side k of the k x k neighbourhood of local attention, or ``None``/``0``/
            ``"global"`` for global attention.
        encoding: ``gevit`` (exactly equivariant) or ``gsanet`` (the GSA-Nets encoding).
        crop_per_layer: pixels cropped on each side after each transformer layer (int or one per layer).
        expansion_per_block: channel multiplier at the first layer of each block (int or one per block).
        zero_init_head: start the 1x1 class map at zero, so every class starts at logit 0 (loss ln K).
            Off in the official code; on, a from-scratch model starts balanced instead of at a loss of 2.6-4.1.
        position_bias_init: ``"zero"`` (official) or ``"uniform"``: the first Linear(1, hidden) of every
            positional MLP gets biases ~ U(-1, 1). With zero biases the centre offset (coordinate 0) maps to
            the zero vector, whose LayerNorm (eps 1e-12) has a gradient of order 1/sqrt(eps), so from-scratch
            training of small models diverges or stalls at chance.
        lifting: ``False``: no lifting layer; the input is already a function on (group x space),
            ``(B, in_channels, |G|, H, W)``, acted on by :meth:`~gevit.groups.Group.act_on_feature_map`
            (e.g. escnn regular fields, the hybrid's ``handover="regular"``), and the first group layer
            maps ``in_channels`` to ``num_channels``.
        head_channels: query/key/value channels per head of the group layers (at least 3: row, column and
            group parts). ``None`` (official): half the layer's output channels, so a layer's cost grows with
            heads x channels; a small value makes many heads affordable.
        lifting_head_channels: the same for the lifting layer (even: row and column halves); ``None``
            (official): ``num_channels // 2``. Its keys and values are affine in the input pixels, so a
            few channels per head express what many do.
    """

    # What gevit.analysis.model_facts reads (with model_name, description and group below).
    model_kind = "gevit"
    attention_maps = "group"  # forward(x, return_intermediates=True): every attention layer's probabilities

    def __init__(
        self,
        group: str = "p4",
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        num_channels: int = 20,
        num_heads: int = 9,
        block_sizes: Sequence[int] = (2, 3),
        expansion_per_block: Union[int, Sequence[int]] = 1,
        crop_per_layer: Union[int, Sequence[int]] = (2, 0, 2, 1, 1),
        attention_window: Union[int, str, None] = 5,
        encoding: str = "gevit",
        norm: str = "layer",
        activation: str = "swish",
        attention_dropout: float = 0.1,
        value_dropout: float = 0.1,
        input_dropout: float = 0.0,
        normalize_between_layers: bool = False,
        maxpool_after_last_block: bool = False,
        dropout_after_maxpool: float = 0.0,
        spatial_pooling: str = "sum",
        group_pooling: str = "max",
        whitening_scale: float = 1.41421356,
        zero_init_head: bool = False,
        position_bias_init: str = "zero",
        lifting: bool = True,
        head_channels: Optional[int] = None,
        lifting_head_channels: Optional[int] = None,
        lifting_num_heads: Optional[int] = None,
        position_init_scale: float = 1.0,
    ):
        super().__init__()
        exactly_equivariant = get_encoding(encoding).exactly_equivariant  # an unknown encoding stops here
        if spatial_pooling not in SPATIAL_POOLINGS or group_pooling not in GROUP_POOLINGS:
            raise ValueError(
                f"spatial_pooling must be one of {SPATIAL_POOLINGS} and group_pooling one of "
                f"{GROUP_POOLINGS}, got {spatial_pooling!r} / {group_pooling!r}"
            )
        if attention_window in (None, 0, "global"):
            attention_window = None
        elif not isinstance(attention_window, int) or attention_window < 3 or attention_window % 2 == 0:
            raise ValueError(f"attention_window must be an odd int >= 3 or 'global', got {attention_window!r}")
        if head_channels is not None and head_channels < 3:
            raise ValueError(f"head_channels must be >= 3 (row, column and group parts), got {head_channels}")
        self.group = get_group(group)
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        self.spatial_pooling, self.group_pooling = spatial_pooling, group_pooling
        self.exactly_invariant = exactly_equivariant
        num_layers = sum(block_sizes)
        crops = per_item(crop_per_layer, num_layers, "crop_per_layer")
        expansions = [max(1, e) for e in per_item(expansion_per_block, len(block_sizes), "expansion_per_block")]

        self.input_dropout = nn.Dropout(input_dropout)
        self.lifting = None
        if lifting:
            self.lifting = LiftingSelfAttention(
                self.group,
                in_channels,
                num_channels // 2 if lifting_head_channels is None else lifting_head_channels,
                num_channels,
                num_heads if lifting_num_heads is None else lifting_num_heads,
                attention_window,
                image_size,
                attention_dropout,
                encoding,
            )
            self.lifting_norm = make_norm(norm, num_channels)
            self.lifting_act = make_activation(activation)

        layers: list[nn.Module] = []
        size, layer = image_size, 0
        channels, width = (num_channels if lifting else in_channels), num_channels  # a layer's input, output
        for block, (block_size, expansion) in enumerate(zip(block_sizes, expansions)):
            out_channels = width * expansion
            for _ in range(block_size):
                if size - 2 * crops[layer] < 1:
                    raise ValueError(f"crop_per_layer={crops} leaves no pixels of a {image_size}x{image_size} input")
                layers.append(
                    GroupTransformerBlock(
                        self.group,
                        channels,
                        out_channels,
                        num_heads,
                        attention_window,
                        size,
                        crops[layer],
                        norm,
                        activation,
                        attention_dropout,
                        value_dropout,
                        encoding,
                        head_channels,
                    )
                )
                if normalize_between_layers:
                    layers += [make_norm(norm, out_channels), make_activation(activation)]
                size -= 2 * crops[layer]
                channels = width = out_channels
                layer += 1
            if block < len(block_sizes) - 1 or maxpool_after_last_block:
                if size % 2:
                    # pooling drops the last row and column of an odd map: exact rotation invariance is lost
                    self.exactly_invariant = False
                    log.warning(
                        "max-pooling a %dx%d map after block %d drops its last row/column, so the "
                        "network is not exactly rotation invariant; choose crop_per_layer so that "
                        "every pooled map has an even size",
                        size,
                        size,
                        block,
                    )
                layers.append(nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2)))
                if dropout_after_maxpool > 0:
                    layers.append(nn.Dropout(dropout_after_maxpool))
                size //= 2
        self.transformer = nn.ModuleList(layers)
        self.head = ChannelLinear(channels, num_classes, bias=False)
        self.final_size = size
        self.num_features = channels
        self._initialise(whitening_scale, zero_init_head, position_bias_init, position_init_scale)

    def _initialise(
        self,
        whitening_scale: float,
        zero_init_head: bool = False,
        position_bias_init: str = "zero",
        position_init_scale: float = 1.0,
    ) -> None:
        """Weights ~ N(0, whitening_scale / sqrt(fan_in)), biases 0 (the original initialisation);
        then the two optional from-scratch fixes (see the class docstring)."""
        if position_bias_init not in POSITION_BIAS_INITS:
            raise ValueError(f"position_bias_init must be one of {POSITION_BIAS_INITS}, got {position_bias_init!r}")
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, whitening_scale / math.sqrt(module.weight.shape[1]))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if zero_init_head:
            nn.init.zeros_(self.head.weight)
        if position_bias_init == "uniform":
            for module in self.modules():
                if isinstance(module, PositionMLP):
                    nn.init.uniform_(module.inp.bias, -1.0, 1.0)
        if position_init_scale != 1.0:
            with torch.no_grad():
                for module in self.modules():
                    if isinstance(module, PositionMLP):
                        module.out.weight.mul_(position_init_scale)

    def attention_layers(self) -> list[nn.Module]:
        """The attention layers in order: the lifting layer (if any), then every group layer's."""
        lifting = [] if self.lifting is None else [self.lifting]
        return lifting + [layer.attention for layer in self.transformer if isinstance(layer, GroupTransformerBlock)]

    @property
    def model_name(self) -> str:
        """``GE-ViT`` or ``GSA-Nets``: the family of the attention layers' positional encoding."""
        return self.attention_layers()[0].encoding.family

    @property
    def attention_reach(self) -> str:
        """``global`` or ``kxk local``: what each query of the attention layers sees."""
        window = self.attention_layers()[0].attention_window
        return "global" if window is None else f"{window}x{window} local"

    @property
    def description(self) -> str:
        return f"{self.model_name} {self.group.name}, {self.attention_reach} attention"

    def forward_features(self, x: torch.Tensor, return_intermediates: bool = False):
        """(B, C, H, W) (``lifting=False``: (B, C, |G|, H, W)) -> (B, num_features, |G|, h, w) before the
        head; with ``return_intermediates`` also ``{"features": [...], "attention": [...]}``: the lifting
        output (if any) and every layer's output
        (each (B, C, |G|, h, w)) and every attention layer's probabilities."""
        if self.lifting is not None and (x.ndim != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.lifting is None and (x.ndim != 5 or x.shape[1:3] != (self.in_channels, len(self.group))):
            raise ValueError(
                f"expected functions on {self.group.name} x space of shape "
                f"(B, {self.in_channels}, {len(self.group)}, H, W), got {tuple(x.shape)}"
            )
        features, attention = [], []
        out = self.input_dropout(x)
        if self.lifting is not None:
            if return_intermediates:
                out, probs = self.lifting(out, return_attention=True)
                attention.append(probs)
            else:
                out = self.lifting(out)
            out = self.lifting_act(self.lifting_norm(out))
            features.append(out)
        for layer in self.transformer:
            if return_intermediates and isinstance(layer, GroupTransformerBlock):
                out, probs = layer(out, return_attention=True)
                attention.append(probs)
                features.append(out)
            else:
                out = layer(out)
        return (out, {"features": features, "attention": attention}) if return_intermediates else out

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, K, |G|, h, w) class maps -> (B, K) logits, pooling space then the group."""
        spatial = {
            "sum": lambda t: t.sum((-2, -1)),
            "mean": lambda t: t.mean((-2, -1)),
            "max": lambda t: t.amax((-2, -1)),
        }[self.spatial_pooling](maps)
        return spatial.amax(-1) if self.group_pooling == "max" else spatial.mean(-1)

    def forward(self, x: torch.Tensor, return_intermediates: bool = False):
        if return_intermediates:
            features, extras = self.forward_features(x, return_intermediates=True)
            return self.pool(self.head(features)), extras
        return self.pool(self.head(self.forward_features(x)))

    def load_official_weights(self, path: Union[str, Path]) -> "GroupTransformer":
        """Load weights saved by the official GE-ViT / GSA-Nets code (see :func:`load_official_weights`);
        what ``model.init_from=FILE`` calls."""
        return load_official_weights(self, path)


# ---- weights trained with the official code ----------------------------------------------------------
_BUFFERS = (
    "row_indices",
    "col_indices",
    "g_indices",
    "group._identity",
    "group._elements",
    "group._relative_positions",
)
_RENAMES = (
    ("lifting_self_attention.", "lifting."),
    ("lifting_normalization.layer_norm.", "lifting_norm."),
    (".attention.0.layer_norm.", ".pre_norm."),
    (".attention.2.", ".attention."),
    (".attention.3.layer_norm.", ".post_norm."),
    (".layer_norm.", "."),
    ("row_embedding.0.", "row_embedding.inp."),
    ("row_embedding.3.", "row_embedding.out."),
    ("row_embedding.1.", "row_embedding.norm."),
    ("col_embedding.0.", "col_embedding.inp."),
    ("col_embedding.3.", "col_embedding.out."),
    ("col_embedding.1.", "col_embedding.norm."),
    (".shortcut.0.", ".shortcut."),
)


def convert_official_state_dict(state_dict: dict, model: GroupTransformer) -> dict:
    """Map a state_dict of the official GE-ViT / GSA-Nets ``GroupTransformer`` (optionally wrapped in
    ``DataParallel``) onto ``model``'s parameter names and layouts.

    1x1 convolutions become Linear weights (trailing singleton dims dropped); buffers the official code
    stores (acted positions, group tables) are dropped because ``model`` recomputes them; the final
    ``transformer.<last>`` 1x1 map becomes ``head``. Raises ``ValueError`` naming every key that
    cannot be placed or has the wrong shape (e.g. a checkpoint of another configuration).
    """
    head_index = str(len(model.transformer))
    target = model.state_dict()
    converted, problems = {}, []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("group.") or any(key.endswith(b) for b in _BUFFERS):
            continue
        if key == f"transformer.{head_index}.weight":
            key = "head.weight"
        for old, new in _RENAMES:
            key = key.replace(old, new)
        if key not in target:
            problems.append(f"unexpected key {key}")
            continue
        if value.ndim > target[key].ndim and value.numel() == target[key].numel():
            value = value.reshape(target[key].shape)
        if value.shape != target[key].shape:
            problems.append(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(target[key].shape)}")
            continue
        converted[key] = value
    missing = sorted(set(target) - set(converted))
    if missing:
        problems.append(f"missing keys {missing}")
    if problems:
        raise ValueError(
            "the official checkpoint does not match this GroupTransformer configuration: " + "; ".join(problems)
        )
    return converted


def load_official_weights(model: GroupTransformer, path: str) -> GroupTransformer:
    """Load weights saved by the official GE-ViT / GSA-Nets code from ``path`` into ``model``."""
    state = read_checkpoint(path, option="model.init_from", what="official GE-ViT weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(convert_official_state_dict(state, model), strict=True)
    return model
