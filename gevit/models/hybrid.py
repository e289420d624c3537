"""Hybrid ViT: an invariant stem that shrinks the image to a small "artificial image", then GE-ViT on it.

GE-ViT attends at pixel level over (group x space), so its cost grows with the number of pixels. The hybrid
first maps the input (B, C, S, S) to a small "artificial image" on a grid that rotates with the input
(28x28 -> 7x7, 96x96 -> 12x12 or 6x6) and runs the GE-ViT
:class:`~gevit.models.group_transformer.GroupTransformer` of the same group on it. Two stems:

``stem="escnn"``
    ``len(stem_channels)`` stages, each ``stem_depth`` x (``R2Conv`` (odd kernel k, padding k//2, stride 1;
    regular fields of the group's escnn gspace, :meth:`gevit.groups.Group.gspace`: ``rot2dOnR2(n)`` for pN,
    ``flipRot2dOnR2(n)`` for pNm) -> ``InnerBatchNorm`` -> ``ReLU``) -> downsampling by 2. What it hands
    to GE-ViT is ``handover``:

    * ``"regular"``: the regular fields themselves, ``(B, D, |G|, s, s)``. A regular field is a function on
      the group at every pixel, its channels ordered as :mod:`gevit.groups` orders the elements, and a
      rotation ``u`` of the input acts on it as on GE-ViT's group features
      (:meth:`~gevit.groups.Group.act_on_feature_map`: shift the group axis by ``u``, rotate the grid), so
      they go straight to GE-ViT's group layers (``GroupTransformer(lifting=False)``): nothing is pooled
      away and no lifting attention is paid for.
    * ``"scalar"`` (the original design): ``GroupPooling`` (max over each field) gives invariant scalar
      fields ``(B, D, s, s)``, which GE-ViT's lifting layer lifts to the group (a lifting layer treats its
      input channels as scalars, so it cannot take regular fields).

``stem="patch_embed"`` (the lighter variant)
    non-overlapping P x P patches (``embed_patch_size``), each embedded by one shared Linear averaged over
    the group orbit of the patch (its 4 quarter turns, and their mirrors for pNm). Averaging a linear map
    over the orbit is the same as using the orbit-averaged weight, so it is computed as one stride-P
    convolution with a C4/D4-symmetric kernel (:meth:`gevit.groups.Group.symmetrize`): every patch feature is
    exactly invariant.

**Exactness.** ``f(rot90(x)) == f(x)`` (and ``f(flip(x)) == f(x)`` for pNm) up to float rounding, at the
data sets' sizes, because every spatial operation commutes with the quarter turns (and mirrors) of the
square grid, which needs its sampling grid to map onto itself:

* stride-1 convolutions with an odd kernel and symmetric padding k//2 keep the size and the centre;
  ``R2Conv`` kernels are exactly C4/D4-steerable on the pixel grid (quarter turns permute grid points);
* ``downsample="avg"``/``"max"``: a 2x2 window with stride 2 tiles an **even** map exactly, and the tiling
  is mapped onto itself by rot90 and flips (28 -> 14 -> 7; 96 -> 48 -> 24 -> 12 -> 6). An odd map has
  no such tiling and is refused;
* ``downsample="antialiased"``: escnn's Gaussian blur (odd filter) with stride 2 has a symmetric grid
  only on an **odd** map (first and last window centres are mirror images iff ``size - 1`` is even).
  An even map is therefore first made odd by a 2x2 mean with stride 1 (28 -> 27; the window is centred
  on the half-pixel grid, so the map stays centred). Padding one row and column on one side (28 -> 29)
  would *not* do: it moves the image centre and symmetric padding never changes the parity. Then the
  blur with stride 2 and padding filter//2 halves it: 28 -> 27 -> 14 -> 13 -> 7; 96 -> ... -> 12 -> 11 -> 6;
* the patch embedding needs ``image_size % embed_patch_size == 0`` so that the patch grid maps onto itself;
* GE-ViT is exactly invariant when every map it max-pools is even (checked: its ``exactly_invariant``
  flag is copied to :attr:`HybridViT.exactly_invariant`). On an odd artificial image (7x7) use a single
  block (``block_sizes=[k]``) so that it never pools.

Use it from a notebook with ``gevit.models.HybridViT(group="p4")`` (defaults: the original design on RotMNIST:
escnn stem, scalar handover, GE-ViT with four 5x5-attention layers on 7x7; ``attention_window=None`` for
global). ``conf/model/hybrid.yaml`` holds the tuned architecture
(regular handover, two 3x3 group layers), ``experiment=hybrid_rotmnist_mini`` its training (docs/hybrid.md).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from gevit.groups import Group, get_group
from gevit.layers.blocks import GroupTransformerBlock
from gevit.layers.common import ChannelLayerNorm, per_item
from gevit.models.group_transformer import GroupTransformer

STEMS = ("escnn", "patch_embed")
DOWNSAMPLES = ("avg", "max", "antialiased")


class SymmetricPatchEmbed(nn.Module):
    """Patch embedding whose output is exactly invariant to the quarter turns (and mirrors) of each patch.

    ``(B, C, S, S) -> (B, dim, S/P, S/P)``. One shared Linear ``C*P*P -> dim`` is averaged over the orbit
    of each patch under C4 (``mirror=False``) or D4 (``mirror=True``): ``mean_g W(g . patch)``. By
    linearity this equals the orbit-averaged weight applied once (:meth:`gevit.groups.Group.symmetrize`),
    so the module stores the Linear's weight and symmetrises it on the fly (gradients reach the shared
    weight exactly as in the averaged form).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, mirror: bool = False, bias: bool = True):
        super().__init__()
        self.in_channels, self.dim, self.patch_size, self.mirror = in_channels, dim, patch_size, mirror
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim, bias=bias)
        self.symmetry: Group = get_group("p4m" if mirror else "p4")  # the square grid's quarter turns (and mirrors)

    def kernel(self) -> torch.Tensor:
        """The orbit-averaged weight as a conv kernel ``(dim, C, P, P)``."""
        weight = self.proj.weight.view(self.dim, self.in_channels, self.patch_size, self.patch_size)
        return self.symmetry.symmetrize(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {self.patch_size}")
        return F.conv2d(x, self.kernel(), self.proj.bias, stride=self.patch_size)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.dim}, patch_size={self.patch_size}, mirror={self.mirror}"


def build_escnn_stem(
    group: str,
    in_channels: int,
    image_size: int,
    channels: Sequence[int],
    kernel_sizes: Union[int, Sequence[int]],
    downsample: str,
    pool_sigma: float,
    depths: Union[int, Sequence[int]] = 1,
    group_pooling: bool = True,
):
    """The escnn stem as a :class:`~gevit.escnn_utils.GeometricWrapper` and its output side.

    Each entry of ``channels`` is one stage of ``depths`` (int or one per stage) ``R2Conv -> InnerBatchNorm
    -> ReLU`` layers with that many regular fields, then a downsampling by 2. With ``group_pooling`` the
    stem ends with ``GroupPooling`` (``channels[-1]`` invariant scalar fields), else it outputs the
    ``channels[-1]`` regular fields themselves (``channels[-1] * |G|`` channels, field-major). Raises
    ``ValueError`` where a downsampling step would not commute with the rotations (see the module docstring).
    """
    from escnn import nn as enn

    from gevit.escnn_utils import GeometricWrapper

    if downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
    kernel_sizes = per_item(kernel_sizes, len(channels), "stem_kernel_size")
    depths = per_item(depths, len(channels), "stem_depth")
    gspace = get_group(group).gspace()
    in_type = enn.FieldType(gspace, in_channels * [gspace.trivial_repr])
    current, size, layers = in_type, image_size, []
    for fields, kernel, depth in zip(channels, kernel_sizes, depths):
        if kernel % 2 == 0:
            raise ValueError(f"stem kernels must be odd (a centred window), got {kernel}")
        hidden = enn.FieldType(gspace, fields * [gspace.regular_repr])
        for _ in range(depth):
            layers += [
                enn.R2Conv(current, hidden, kernel_size=kernel, padding=kernel // 2, bias=False),
                enn.InnerBatchNorm(hidden),
                enn.ReLU(hidden, inplace=True),
            ]
            current = hidden
        if downsample == "antialiased":
            if size % 2 == 0:  # even -> odd with a centred 2x2 mean (stride 1)
                layers.append(enn.PointwiseAvgPool2D(hidden, kernel_size=2, stride=1))
                size -= 1
            pool = enn.PointwiseAvgPoolAntialiased2D(hidden, sigma=pool_sigma, stride=2)
            layers.append(pool)
            size = (size + 2 * pool.padding[0] - pool.filter.shape[-1]) // 2 + 1
        else:
            if size % 2:
                raise ValueError(
                    f"downsample={downsample!r} needs even maps, but a stage sees {size}x{size} "
                    f"(image_size {image_size}); use fewer stages or downsample='antialiased'"
                )
            cls = enn.PointwiseAvgPool2D if downsample == "avg" else enn.PointwiseMaxPool2D
            layers.append(cls(hidden, kernel_size=2, stride=2))
            size //= 2
    if group_pooling:
        layers.append(enn.GroupPooling(current))
    stem = GeometricWrapper(enn.SequentialModule(*layers))
    if stem.output_size(image_size) != size:  # the geometry above is what escnn computes
        raise RuntimeError(f"stem output {stem.output_size(image_size)} != expected {size}")
    return stem, size


# Where the GE-ViT part differs from GroupTransformer's defaults (the official rotMNIST layout): one block
# of four 5x5-attention layers without crops, so the odd 7x7 artificial image is never max-pooled, and
# mean pooling over space.
VIT_DEFAULTS = dict(num_channels=20, attention_window=5, block_sizes=(4,), crop_per_layer=0, spatial_pooling="mean")
HANDOVERS = ("scalar", "regular")


class HybridViT(nn.Module):
    """Invariant stem -> GE-ViT (same group) -> logits; ``(B, C, S, S) -> (B, num_classes)``.

    Args:
        group: a :mod:`gevit.groups` name (p4, p8, p4m, ...), used by the stem and by GE-ViT.
        stem: ``escnn`` (steerable CNN) or ``patch_embed`` (orbit-averaged patch Linear).
        stem_channels: regular fields per escnn stage (each stage halves the map).
        stem_kernel_size: odd R2Conv kernel (int or one per stage).
        stem_depth: R2Conv layers per escnn stage (int or one per stage).
        downsample: ``avg`` / ``max`` (2x2, stride 2, even maps) or ``antialiased`` (escnn's Gaussian).
        handover: what the escnn stem hands to GE-ViT: ``scalar`` (group pooling to invariant fields, which
            GE-ViT lifts with its lifting layer) or ``regular`` (the regular fields themselves, a function
            on group x space that GE-ViT's group layers take as they are: ``GroupTransformer(lifting=False)``).
            An escnn option, as ``embed_*`` are patch_embed's: the patch embedding always hands over scalars.
        embed_patch_size, embed_dim: patch size (divides ``image_size``) and width of ``patch_embed``.
        width_group: the group ``stem_channels`` and GE-ViT's ``num_channels`` are counted for (e.g. ``p4``):
            ``group`` then gets ``|width_group| / |group|`` times as many fields and channels per element
            (rounded; ``num_channels`` to a multiple of 4), i.e. as many channels per pixel, so that p4m and
            p8 cost about what p4 costs instead of 2-4x more. ``None``: the widths are ``group``'s own.
        vit_options: keywords of :class:`~gevit.models.group_transformer.GroupTransformer` for the
            GE-ViT part (defaults :data:`VIT_DEFAULTS` on top of GroupTransformer's own), e.g.
            ``attention_window``: its neighbourhood on the artificial image (odd int, or ``None`` /
            ``"global"`` for global attention).
    """

    # What gevit.analysis.model_facts reads (with model_name, description and group below).
    model_kind = "hybrid"
    attention_maps = None

    def __init__(
        self,
        group: str = "p4",
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        stem: str = "escnn",
        stem_channels: Sequence[int] = (8, 16),
        stem_kernel_size: Union[int, Sequence[int]] = (5, 3),
        stem_depth: Union[int, Sequence[int]] = 1,
        downsample: str = "avg",
        pool_sigma: float = 0.66,
        handover: str = "scalar",
        embed_patch_size: int = 4,
        embed_dim: int = 16,
        width_group: Optional[str] = None,
        **vit_options,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if handover not in HANDOVERS:
            raise ValueError(f"handover must be one of {HANDOVERS}, got {handover!r}")
        handover = handover if stem == "escnn" else "scalar"  # the patch embedding's features are scalars
        self.group_name, self.stem_kind, self.handover = group, stem, handover
        vit_options = {**VIT_DEFAULTS, **vit_options}
        if width_group is not None:  # as many channels per pixel as the widths give width_group
            factor = len(get_group(width_group)) / len(get_group(group))
            stem_channels = [max(1, round(c * factor)) for c in stem_channels]
            vit_options["num_channels"] = 4 * max(1, round(vit_options["num_channels"] * factor / 4))
        self.stem_channels, self.num_channels = list(stem_channels), vit_options["num_channels"]
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        if stem == "escnn":
            self.stem, size = build_escnn_stem(
                group,
                in_channels,
                image_size,
                list(stem_channels),
                stem_kernel_size,
                downsample,
                pool_sigma,
                stem_depth,
                group_pooling=handover == "scalar",
            )
            features = int(stem_channels[-1])
            self.stem_norm = nn.Identity()
        else:
            if image_size % embed_patch_size:
                raise ValueError(
                    f"image_size {image_size} must be divisible by embed_patch_size {embed_patch_size} "
                    "(the patch grid has to map onto itself under rot90)"
                )
            self.stem = SymmetricPatchEmbed(in_channels, embed_dim, embed_patch_size, get_group(group).mirror)
            size, features = image_size // embed_patch_size, embed_dim
            # per-position LayerNorm over channels: a pointwise map, so it keeps the invariance
            self.stem_norm = ChannelLayerNorm(embed_dim)
        self.artificial_size, self.artificial_channels = size, features
        self.vit = GroupTransformer(
            group=group,
            in_channels=features,
            num_classes=num_classes,
            image_size=size,
            lifting=handover == "scalar",
            **vit_options,
        )
        self.exactly_invariant = self.vit.exactly_invariant

    @property
    def group(self) -> Group:
        """The group of the stem and of GE-ViT."""
        return self.vit.group

    @property
    def model_name(self) -> str:
        return f"hybrid {self.vit.model_name}"

    @property
    def description(self) -> str:
        size = self.artificial_size
        return (
            f"hybrid: {self.stem_kind} stem -> {self.vit.model_name} {self.group.name}, "
            f"{self.vit.attention_reach} attention on {size}x{size}"
        )

    def artificial_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, D, s, s) invariant values (``handover="scalar"``) or (B, D, |G|, s, s) regular
        fields (``"regular"``), on a grid that rotates with the input."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        out = self.stem_norm(self.stem(x))
        if self.handover == "regular":  # escnn's channels are field-major: (D * |G|) -> (D, |G|)
            out = out.view(out.shape[0], self.artificial_channels, -1, *out.shape[-2:])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(self.artificial_image(x))


def attention_pairs(model: nn.Module) -> int:
    """Query-key pairs per image and head that the GE-ViT part of ``model`` (a HybridViT or a GroupTransformer)
    scores in one forward pass: the lifting layer has |G| x h x w queries with the in-map positions of their
    k x k (or global) neighbourhood as keys, a group layer |G| x h x w queries with |G| x those keys."""
    vit = model.vit if isinstance(model, HybridViT) else model
    g, size = len(vit.group), vit.image_size
    total = _pairs(size, vit.lifting.patch_size) * g if vit.lifting is not None else 0
    for layer in vit.transformer:
        if isinstance(layer, GroupTransformerBlock):
            total += _pairs(size, layer.attention.patch_size) * g * g
            size -= 2 * layer.crop.size
        elif isinstance(layer, nn.MaxPool3d):
            size //= 2
    return total


def _pairs(size: int, k: int) -> int:
    """Pairs (query, key) on a size x size map with a k x k neighbourhood clipped to the map."""
    r = k // 2
    per_axis = sum(min(size - 1, i + r) - max(0, i - r) + 1 for i in range(size))
    return per_axis * per_axis
