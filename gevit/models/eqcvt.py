"""EqCvT (Sachdev, GSoC 2022): a C4-steerable escnn block followed by one Convolutional-ViT stage; the plain CvT.

Groups are :mod:`gevit.groups` names: ``p4`` (= c4 = C4, rotations by 90 degrees) or ``p4m`` (= d4 = D4, also
mirrors); the escnn gspace, the kernel orbits and the actions all come from there.

Shapes follow torch: images ``(B, C, S, S)``, logits ``(B, num_classes)``. A rotation by 90 degrees is
``torch.rot90(x, 1, dims=(-2, -1))``; a flip is ``torch.flip(x, dims=(-1,))``.

The published EqCvT (64,810 parameters for 1-channel 129x129 input and 2 classes) is
``EqCvT(invariant=False)``: its escnn block is C4-equivariant and ends in group pooling, so the 10 fields it
hands to the CvT are invariant *per pixel*, but the feature map itself still rotates with the input, and a
CvT stage with generic 3x3 kernels, stride-2 token and key/value grids and an even token grid is not
rotation-invariant. Its logits change under ``torch.rot90`` (see ``docs/eqcvt.md`` for measured errors).

The default, ``invariant=True``, makes the whole network exactly invariant to the group (C4: ``rot90``; D4:
``rot90`` and flips), up to float rounding, at any input size, by three changes to the CvT stage only:

1. every spatial kernel of the CvT (token embedding and the depthwise convolutions of the q/k/v projections)
   is tied over the orbits of the group acting on the k x k grid (:class:`SymmetricConv2d`: a 3x3 kernel
   has three free values, centre / edge / corner), so each convolution commutes with the group;
2. a stride-2 convolution commutes with ``rot90`` only when its sampling grid maps onto itself, i.e. when
   the first and last window centres are mirror images. For an odd map of side n a 3x3 stride-2 kernel
   does this with padding 1 (giving (n+1)/2) and with padding 0 (giving (n-1)/2); the padding is chosen so
   that the token grid is odd again, which the key/value stride-2 projection then needs. An even map has
   no such grid, so an even map entering the CvT is first reduced by one with a 2x2 mean (stride 1, a
   D4-symmetric filter);
3. nothing else needs changing: LayerNorm, 1x1 convolutions and the MLP act per position, attention over
   the token set is permutation-equivariant (CvT has no position embedding), and the head pools globally.

It has 62,122 parameters for 1-channel 129x129 input and 2 classes (-4.1 % of the published count: the
tied kernels have 3 instead of 9 values).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from gevit.groups import Group, get_group
from gevit.layers.common import ChannelLayerNorm

GROUPS = ("p4", "p4m")  # canonical names; any spelling of gevit.groups is accepted (c4, C4, d4, D4, ...)


def square_group(group) -> Group:
    """The :class:`~gevit.groups.Group` of ``group`` if it is p4 or p4m (the models' symmetries), else ValueError."""
    resolved = get_group(group)
    if resolved.name not in GROUPS:
        raise ValueError(
            f"group must be one of {GROUPS} (or an alias such as c4 / d4), got {group!r}: the symmetric kernels and "
            "the invariant pooling are built from the quarter turn (and the mirror), exact pixel permutations"
        )
    return resolved


# ---- symmetric convolutions -----------------------------------------------------------------------
class SymmetricConv2d(nn.Module):
    """A Conv2d whose k x k kernels are invariant under p4 (rotations by 90 degrees) or p4m (and mirrors).

    Each kernel is parametrised by one value per pixel orbit (:meth:`gevit.groups.Group.kernel_orbits`; 3 for
    k = 3, 6 for k = 5 under p4m), so ``conv(rot90(x)) == rot90(conv(x))`` for stride 1 and for any stride/padding whose sampling
    grid is mapped onto itself (see :func:`symmetric_paddings`). Same interface as ``nn.Conv2d`` (square
    kernels, ``groups`` supported); initialised like ``nn.Conv2d`` (uniform, bound ``1/sqrt(fan_in)``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        group: str = "p4",
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}"
            )
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.symmetry = square_group(group)
        self.stride, self.padding, self.groups, self.group = stride, padding, groups, self.symmetry.name
        orbits = self.symmetry.kernel_orbits(kernel_size)
        self.register_buffer("orbit_index", orbits, persistent=False)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, int(orbits.max()) + 1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(in_channels // groups * kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def kernel(self) -> torch.Tensor:
        """The full kernel ``(out_channels, in_channels / groups, k, k)``."""
        return self.weight[..., self.orbit_index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding, groups=self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, group={self.group}"
        )


def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    padding: int,
    groups: int = 1,
    bias: bool = True,
    symmetry: Optional[str] = None,
) -> nn.Module:
    """``nn.Conv2d``, or :class:`SymmetricConv2d` with group ``symmetry`` (p4 / p4m) when it is given."""
    if symmetry is None:
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
    return SymmetricConv2d(in_channels, out_channels, kernel_size, stride, padding, groups, bias, symmetry)


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Side of a convolution's output for a square input of side ``size``."""
    return (size + 2 * padding - kernel_size) // stride + 1


def symmetric_paddings(size: int, kernel_size: int, stride: int) -> list[int]:
    """Paddings (largest first, at most ``kernel_size // 2``) for which the conv's sampling grid is mirror-symmetric.

    Output pixel i reads the window centred at input position ``c0 + stride * i`` with
    ``c0 = (kernel_size - 1) // 2 - padding``; the grid maps onto itself under ``rot90``/flips iff the first and
    last centres satisfy ``c_first + c_last == size - 1``. Stride 1 always qualifies.
    """
    paddings = []
    for padding in range(kernel_size // 2, -1, -1):
        out = conv_output_size(size, kernel_size, stride, padding)
        first = (kernel_size - 1) // 2 - padding
        if out >= 1 and 2 * first + stride * (out - 1) == size - 1:
            paddings.append(padding)
    return paddings


# ---- CvT building blocks --------------------------------------------------------------------------
class ConvProjection(nn.Module):
    """CvT's convolutional projection: depthwise k x k conv (no bias) -> BatchNorm2d -> 1x1 conv (no bias).

    (B, dim, H, W) -> (B, out_dim, H', W') with H' the conv's output side for ``stride``/``padding``.
    """

    def __init__(
        self, dim: int, out_dim: int, kernel_size: int, stride: int, padding: int, symmetry: Optional[str] = None
    ):
        super().__init__()
        self.depthwise = make_conv(dim, dim, kernel_size, stride, padding, groups=dim, bias=False, symmetry=symmetry)
        self.norm = nn.BatchNorm2d(dim)
        self.pointwise = nn.Conv2d(dim, out_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.norm(self.depthwise(x)))


class ConvAttention(nn.Module):
    """Multi-head attention over the positions of a feature map, with convolutional q/k/v projections.

    (B, dim, H, W) -> (B, dim, H, W). Queries come from every position (stride-1 projection), keys and values
    from a ``kv_stride`` grid; heads take contiguous channel slices of the ``num_heads * head_dim`` projections;
    scale ``head_dim ** -0.5``; dropout after the output 1x1 conv only (as in EqCvT's CvT: none on the
    attention weights, which also keeps ``F.scaled_dot_product_attention`` on its fused kernels in training).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        proj_kernel: int,
        kv_stride: int,
        kv_padding: int,
        dropout: float = 0.0,
        symmetry: Optional[str] = None,
    ):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.head_dim = num_heads, head_dim
        self.to_q = ConvProjection(dim, inner, proj_kernel, 1, proj_kernel // 2, symmetry)
        self.to_kv = ConvProjection(dim, 2 * inner, proj_kernel, kv_stride, kv_padding, symmetry)
        self.proj = nn.Conv2d(inner, dim, 1)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        k, v = self.to_kv(x).chunk(2, dim=1)

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # (B, heads*d, h, w) -> (B, heads, h*w, d)
            return t.reshape(b, self.num_heads, self.head_dim, -1).transpose(-2, -1)

        out = F.scaled_dot_product_attention(split_heads(self.to_q(x)), split_heads(k), split_heads(v))
        out = out.transpose(-2, -1).reshape(b, self.num_heads * self.head_dim, h, w)
        return self.proj_drop(self.proj(out))


class ConvTransformerBlock(nn.Module):
    """Pre-norm CvT block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``; (B, dim, H, W) -> (B, dim, H, W).

    The MLP is 1x1 conv dim -> ``mlp_hidden_dim`` -> GELU -> dropout -> 1x1 conv -> dropout.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_hidden_dim: int,
        proj_kernel: int,
        kv_stride: int,
        kv_padding: int,
        dropout: float = 0.0,
        symmetry: Optional[str] = None,
    ):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = ConvAttention(dim, num_heads, head_dim, proj_kernel, kv_stride, kv_padding, dropout, symmetry)
        self.norm2 = ChannelLayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, mlp_hidden_dim, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv2d(mlp_hidden_dim, dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CvT(nn.Module):
    """One Convolutional-ViT stage (Wu et al. 2021) and EqCvT's head: (B, C, S, S) -> logits (B, num_classes).

    Stage: ``embed_kernel`` x ``embed_kernel`` stride-``embed_stride`` convolutional token embedding to
    ``embed_dim`` channels + channel LayerNorm, then ``depth`` :class:`ConvTransformerBlock` s (``num_heads``
    heads of ``head_dim``, ``proj_kernel`` depthwise projections + BatchNorm + 1x1, keys/values at stride
    ``kv_stride``, MLP hidden ``mlp_hidden_dim``, dropout ``dropout``). Head: global average pooling ->
    Linear(embed_dim, head_hidden_dim) -> BatchNorm1d -> ELU -> Linear(head_hidden_dim, num_classes) (the
    BatchNorm needs training batches of at least 2).

    ``invariant=False`` is the plain CvT (paddings ``k // 2``). ``invariant=True`` makes it exactly invariant
    to ``group`` (p4: ``rot90``; p4m: also flips): kernels tied over the group's orbits, an even input
    first reduced by a 2x2 mean (stride 1), and the embedding padding chosen so that the token grid and the
    key/value grid are mirror-symmetric (see the module docstring). ``token_size`` and ``kv_size`` are the
    sides of the token map and of the key/value map for ``image_size`` inputs.
    """

    def __init__(
        self,
        image_size: int = 129,
        in_channels: int = 1,
        num_classes: int = 2,
        invariant: bool = False,
        group: str = "p4",
        embed_dim: int = 32,
        embed_kernel: int = 3,
        embed_stride: int = 2,
        depth: int = 2,
        num_heads: int = 3,
        head_dim: int = 64,
        mlp_hidden_dim: int = 64,
        proj_kernel: int = 3,
        kv_stride: int = 2,
        dropout: float = 0.1,
        head_hidden_dim: int = 64,
    ):
        super().__init__()
        group = square_group(group).name
        if embed_kernel % 2 == 0 or proj_kernel % 2 == 0:
            raise ValueError(f"embed_kernel ({embed_kernel}) and proj_kernel ({proj_kernel}) must be odd")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.invariant, self.group, self.embed_dim = invariant, group, embed_dim
        symmetry = group if invariant else None
        size = image_size
        if invariant and size % 2 == 0:
            self.parity_pool: nn.Module = nn.AvgPool2d(2, stride=1)
            size -= 1
        else:
            self.parity_pool = nn.Identity()
        if invariant:
            embed_padding, kv_padding = self._symmetric_geometry(
                size, embed_kernel, embed_stride, proj_kernel, kv_stride
            )
        else:
            embed_padding, kv_padding = embed_kernel // 2, proj_kernel // 2
        self.token_size = conv_output_size(size, embed_kernel, embed_stride, embed_padding)
        self.kv_size = conv_output_size(self.token_size, proj_kernel, kv_stride, kv_padding)
        if self.kv_size < 1:
            raise ValueError(f"image_size {image_size} is too small for this CvT stage")
        self.embed = make_conv(in_channels, embed_dim, embed_kernel, embed_stride, embed_padding, symmetry=symmetry)
        self.embed_norm = ChannelLayerNorm(embed_dim)
        self.blocks = nn.Sequential(
            *[
                ConvTransformerBlock(
                    embed_dim,
                    num_heads,
                    head_dim,
                    mlp_hidden_dim,
                    proj_kernel,
                    kv_stride,
                    kv_padding,
                    dropout,
                    symmetry,
                )
                for _ in range(depth)
            ]
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(embed_dim, head_hidden_dim),
            nn.BatchNorm1d(head_hidden_dim),
            nn.ELU(),
            nn.Linear(head_hidden_dim, num_classes),
        )

    @staticmethod
    def _symmetric_geometry(
        size: int, embed_kernel: int, embed_stride: int, proj_kernel: int, kv_stride: int
    ) -> tuple[int, int]:
        """(embedding padding, key/value padding) whose sampling grids are both mirror-symmetric."""
        for embed_padding in symmetric_paddings(size, embed_kernel, embed_stride):
            tokens = conv_output_size(size, embed_kernel, embed_stride, embed_padding)
            kv_paddings = symmetric_paddings(tokens, proj_kernel, kv_stride)
            if kv_paddings:
                return embed_padding, kv_paddings[0]
        raise ValueError(
            f"no padding gives rotation-symmetric sampling grids for a {size}x{size} map with "
            f"embed_stride={embed_stride} and kv_stride={kv_stride}; use invariant=false or "
            f"strides 1/2"
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, image_size, image_size) -> token map (B, embed_dim, token_size, token_size)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (B, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(x.shape)}"
            )
        return self.blocks(self.embed_norm(self.embed(self.parity_pool(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


# ---- EqCvT ---------------------------------------------------------------------------------------
def stem_symmetry(symmetry: Group, stem_group: Optional[str]) -> Group:
    """The group of EqCvT's escnn block: ``symmetry`` itself, or a larger ``stem_group`` containing it
    (C_8, C_16 ... for p4: its rotations by multiples of 90 degrees act exactly on the pixel grid, so the
    network stays exactly invariant to ``symmetry`` while the group-pooled fields are also invariant, up to
    sampling, to the finer rotations)."""
    if stem_group is None:
        return symmetry
    stem = get_group(stem_group)
    if stem.num_rotations % symmetry.num_rotations or (symmetry.mirror and not stem.mirror):
        raise ValueError(f"stem_group {stem_group!r} must contain the network's group {symmetry.name}")
    return stem


class EqCvT(nn.Module):
    """EqCvT: escnn steerable block -> group pooling -> one CvT stage -> head; (B, C, S, S) -> (B, num_classes).

    Equivariant block (escnn, group ``group`` = p4: rotations by 90 degrees, or p4m: rotations and mirrors,
    acting on the plane and on the fields): optional circular input mask (e2cnn's ``MaskModule`` values:
    radius ``(S-1)/2`` shrunk by ``mask_margin`` %), ``R2Conv`` from ``input_fields`` trivial fields to
    ``regular_fields`` regular fields (``conv_kernel`` x ``conv_kernel``, padding ``conv_padding``, no bias),
    ``InnerBatchNorm``, ``ReLU``, ``PointwiseAvgPoolAntialiased`` (``pool_sigma``, stride 1, no padding) and
    ``GroupPooling``: (B, C, S, S) -> ``regular_fields`` invariant fields (B, regular_fields, S', S') with
    S' = S + 2 * conv_padding - conv_kernel + 1 - 4 (the pooling's Gaussian is 5x5 for sigma 0.66; 121 for
    S = 129). The map still rotates with the input.

    ``input_fields=None`` uses one trivial field per image channel (the published code: 1 trivial -> 10
    regular). ``input_fields=3`` with 1-channel images is the research abstract's "3 trivial + 10 regular"
    variant: the grey image is fed three times (as a grey image loaded as RGB would be), which tripled the
    R2Conv weights (540 instead of 180) without changing the functions it can represent.

    Then :class:`CvT` on the invariant fields (its ``embed_dim``... arguments; defaults are the published
    ones: 32 channels, depth 2, 3 heads of 64, MLP 64, key/value stride 2, dropout 0.1, head 32 -> 64 -> K).

    ``invariant=True`` (default): exactly invariant logits under the group (``torch.rot90``; for p4m also
    ``torch.flip``) at any image size, proven by ``tests/gevit/test_eqcvt.py`` at 28, 96 and 129; 62,122 parameters
    at 129x129x1 / 2 classes. ``invariant=False``: the published architecture, 64,810 parameters, whose
    invariance is only approximate. See the module docstring for what the two differ in.
    """

    def __init__(
        self,
        image_size: int = 129,
        in_channels: int = 1,
        num_classes: int = 2,
        invariant: bool = True,
        group: str = "p4",
        input_fields: Optional[int] = None,
        regular_fields: int = 10,
        conv_kernel: int = 7,
        conv_padding: int = 1,
        mask: bool = True,
        mask_margin: float = 1.0,
        pool_sigma: float = 0.66,
        embed_dim: int = 32,
        embed_kernel: int = 3,
        embed_stride: int = 2,
        depth: int = 2,
        num_heads: int = 3,
        head_dim: int = 64,
        mlp_hidden_dim: int = 64,
        proj_kernel: int = 3,
        kv_stride: int = 2,
        dropout: float = 0.1,
        head_hidden_dim: int = 64,
        stem_group: Optional[str] = None,
        stem_layers: int = 1,
        stem_kernel: int = 3,
    ):
        super().__init__()
        from escnn import nn as enn
        from escnn.nn.modules.masking_module import build_mask

        from gevit.escnn_utils import GeometricWrapper

        symmetry = square_group(group)
        group = symmetry.name
        input_fields = in_channels if input_fields is None else input_fields
        if input_fields != in_channels and in_channels != 1:
            raise ValueError(
                f"input_fields={input_fields} differs from in_channels={in_channels}; only a "
                f"1-channel image can be repeated into several trivial fields"
            )
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.input_fields, self.invariant, self.group = input_fields, invariant, group
        if mask:
            self.register_buffer("mask", build_mask(image_size, dim=2, margin=mask_margin), persistent=False)
        else:
            self.mask = None

        self.stem_group = stem_symmetry(symmetry, stem_group).name
        if stem_layers < 1 or stem_kernel % 2 == 0:
            raise ValueError(f"stem_layers must be >= 1 and stem_kernel odd, got {stem_layers} / {stem_kernel}")
        gspace = get_group(self.stem_group).gspace()
        in_type = enn.FieldType(gspace, input_fields * [gspace.trivial_repr])
        hidden = enn.FieldType(gspace, regular_fields * [gspace.regular_repr])
        layers = [enn.R2Conv(in_type, hidden, kernel_size=conv_kernel, padding=conv_padding, bias=False)]
        for _ in range(stem_layers - 1):  # regular -> regular, size kept
            layers += [
                enn.InnerBatchNorm(hidden),
                enn.ReLU(hidden, inplace=True),
                enn.R2Conv(hidden, hidden, kernel_size=stem_kernel, padding=stem_kernel // 2, bias=False),
            ]
        self.equivariant = GeometricWrapper(
            enn.SequentialModule(
                *layers,
                enn.InnerBatchNorm(hidden),
                enn.ReLU(hidden, inplace=True),
                enn.PointwiseAvgPoolAntialiased2D(hidden, sigma=pool_sigma, stride=1, padding=0),
                enn.GroupPooling(hidden),
            )
        )
        self.field_size = self.equivariant.output_size(image_size)
        self.cvt = CvT(
            image_size=self.field_size,
            in_channels=regular_fields,
            num_classes=num_classes,
            invariant=invariant,
            group=group,
            embed_dim=embed_dim,
            embed_kernel=embed_kernel,
            embed_stride=embed_stride,
            depth=depth,
            num_heads=num_heads,
            head_dim=head_dim,
            mlp_hidden_dim=mlp_hidden_dim,
            proj_kernel=proj_kernel,
            kv_stride=kv_stride,
            dropout=dropout,
            head_hidden_dim=head_hidden_dim,
        )

    def invariant_fields(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, S, S) -> group-pooled fields (B, regular_fields, field_size, field_size)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"EqCvT expects images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )
        if self.mask is not None:
            x = x * self.mask
        if self.input_fields != self.in_channels:
            x = x.expand(-1, self.input_fields, -1, -1)
        return self.equivariant(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cvt(self.invariant_fields(x))
