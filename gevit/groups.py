"""Discrete rotation (and mirror) groups: one place for their elements, algebra and actions.

Names (shared by GE-ViT, the post-hoc wrappers and the escnn models):

| name | group | elements |
|---|---|---|
| ``z2``  | trivial (translations only) | 1 |
| ``p2``, ``p4``, ``p8``, ``p12``, ``p16`` | rotations by multiples of 360/n degrees (C_n) | n |
| ``mz2`` | identity and a mirror | 2 |
| ``p4m``, ``p8m`` | rotations and mirrors (D_n) | 2n |

Aliases (any case): ``c2, c4, c8, c12, c16`` (= p2, p4 ...), ``flip``/``d1`` (= mz2), ``d4`` (= p4m),
``d8`` (= p8m), ``c1`` (= z2); so ``p4 = c4 = C4`` and ``p4m = d4 = D4``. Configs spell every group by its canonical name.

An element is the pair ``(r, m)``, meaning "mirror if m, then rotate counter-clockwise by r*360/n
degrees": its matrix is ``R(r) @ M**m``. Elements are indexed ``r + n*m``. Coordinates are image offsets
``(row, col)`` with rows pointing down, so that rotating an image counter-clockwise by 90 degrees
(``torch.rot90(x, 1, (-2, -1))``) maps the offset ``(dr, dc)`` to ``(-dc, dr)``: the matrix
``[[cos, -sin], [sin, cos]]``. The mirror ``M`` is a horizontal flip (``torch.flip(x, (-1,))``):
``(dr, dc) -> (dr, -dc)``.

The group acts on a feature map ``f(g, x)`` on (group x space) from the left:
``(u . f)(g, x) = f(u^-1 g, A_u^-1 x)``, which :meth:`Group.act_on_feature_map` implements.

This module is the one home of the group concept: besides the algebra it gives the escnn gspace of a
group (:meth:`Group.gspace`, used by the escnn models), the orbit of an image batch and its inverse on
per-view maps (:meth:`Group.orbit`, :meth:`Group.undo_orbit`: post-hoc views, augmentations), the orbits
of the pixels of a k x k kernel (:meth:`Group.kernel_orbits`: tied, invariant kernels) and the orbit
average of a kernel (:meth:`Group.symmetrize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from gevit.rotations import rotate

_SPECS = {
    "z2": (1, False),
    "p2": (2, False),
    "p4": (4, False),
    "p8": (8, False),
    "p12": (12, False),
    "p16": (16, False),
    "mz2": (1, True),
    "p4m": (4, True),
    "p8m": (8, True),
}

# Names used for input-transformation groups (post-hoc wrappers) and the C_n / D_n names of the escnn
# models are aliases of the same groups (looked up case-insensitively: C4 = c4 = p4).
ALIASES = {
    "c1": "z2",
    "c2": "p2",
    "c4": "p4",
    "c8": "p8",
    "c12": "p12",
    "c16": "p16",
    "flip": "mz2",
    "d1": "mz2",
    "d4": "p4m",
    "d8": "p8m",
}

GROUP_NAMES = tuple(_SPECS) + tuple(ALIASES)


@dataclass(frozen=True)
class Group:
    """C_n (``mirror=False``) or D_n (``mirror=True``); see the module docstring for conventions."""

    name: str
    num_rotations: int
    mirror: bool

    # ---- elements --------------------------------------------------------------------------------
    @property
    def order(self) -> int:
        return self.num_rotations * (2 if self.mirror else 1)

    def __len__(self) -> int:
        return self.order

    @cached_property
    def elements(self) -> list[tuple[int, int]]:
        """``[(r, m), ...]`` in index order ``r + n*m``."""
        n = self.num_rotations
        return [(i % n, i // n) for i in range(self.order)]

    def index(self, element: tuple[int, int]) -> int:
        r, m = element
        return r % self.num_rotations + self.num_rotations * m

    def angle_deg(self, index: int) -> float:
        return self.elements[index][0] * 360.0 / self.num_rotations

    @property
    def contains_quarter_turn(self) -> bool:
        """True when rotating by 90 degrees is an element (n divisible by 4)."""
        return self.num_rotations % 4 == 0

    @property
    def acts_exactly_on_pixels(self) -> bool:
        """True when every element maps the pixel grid onto itself (rotations by multiples of 90 degrees,
        mirrors): z2, p2, p4, mz2, p4m. Only such groups can tie kernels or act on maps without resampling."""
        return 4 % self.num_rotations == 0

    @cached_property
    def pixel_exact_elements(self) -> tuple[int, ...]:
        """Indices of the elements that map the pixel grid onto itself (rotations by multiples of 90
        degrees, with or without the mirror), identity first: the elements an exact equivariance test
        applies (``act_on_images`` and ``act_on_feature_map`` need no resampling for them)."""
        return tuple(i for i, (r, _) in enumerate(self.elements) if (4 * r) % self.num_rotations == 0)

    def quarter_turn_steps(self) -> int:
        if not self.contains_quarter_turn:
            raise ValueError(f"{self.name} does not contain the 90-degree rotation")
        return self.num_rotations // 4

    # ---- algebra ---------------------------------------------------------------------------------
    def compose(self, a: int, b: int) -> int:
        """Index of ``a * b`` (apply b first). R(r1) M^m1 R(r2) M^m2 = R(r1 + (-1)^m1 r2) M^(m1+m2)."""
        (r1, m1), (r2, m2) = self.elements[a], self.elements[b]
        return self.index((r1 + (-r2 if m1 else r2), m1 ^ m2))

    def inverse(self, a: int) -> int:
        r, m = self.elements[a]
        return self.index((r if m else -r, m))

    @cached_property
    def cayley_table(self) -> torch.Tensor:
        """``table[a, b] = index of a * b`` (long, |G| x |G|)."""
        return torch.tensor([[self.compose(a, b) for b in range(self.order)] for a in range(self.order)])

    @cached_property
    def inverses(self) -> torch.Tensor:
        return torch.tensor([self.inverse(a) for a in range(self.order)])

    # ---- actions on the plane ----------------------------------------------------------------------
    def matrix(self, index: int, dtype=torch.float64) -> torch.Tensor:
        """2x2 matrix of the element acting on (row, col) offsets."""
        r, m = self.elements[index]
        theta = 2.0 * math.pi * r / self.num_rotations
        c, s = math.cos(theta), math.sin(theta)
        rotation = torch.tensor([[c, -s], [s, c]], dtype=dtype)
        return rotation @ torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=dtype) if m else rotation

    def matrices(self, dtype=torch.float64) -> torch.Tensor:
        """All element matrices, (|G|, 2, 2)."""
        return torch.stack([self.matrix(i, dtype) for i in range(self.order)])

    def act_on_offsets(self, index: int, offsets: torch.Tensor) -> torch.Tensor:
        """Apply the element to (..., 2) (row, col) offsets."""
        return offsets @ self.matrix(index, offsets.dtype).T

    # ---- actions on images and feature maps --------------------------------------------------------
    def act_on_images(
        self, images: torch.Tensor, index: int, interpolation: str = "bilinear", padding_mode: str = "zeros"
    ) -> torch.Tensor:
        """Transform (..., H, W) images by the element: mirror (if any), then rotate counter-clockwise.

        Exact (``torch.flip`` / ``torch.rot90``) for multiples of 90 degrees; interpolated otherwise.
        """
        r, m = self.elements[index]
        out = torch.flip(images, dims=(-1,)) if m else images
        angle = r * 360.0 / self.num_rotations
        if angle == 0.0:
            return out
        if out.ndim == 4:
            return rotate(out, angle, interpolation=interpolation, padding_mode=padding_mode)
        lead = out.shape[:-2]
        flat = out.reshape(-1, 1, *out.shape[-2:])
        return rotate(flat, angle, interpolation=interpolation, padding_mode=padding_mode).reshape(
            *lead, *out.shape[-2:]
        )

    def orbit(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """All transformed copies: (B, C, H, W) -> (B, |G|, C, H, W), element ``i`` at position ``i``."""
        return torch.stack([self.act_on_images(images, i, **kwargs) for i in range(self.order)], dim=1)

    def act_on_feature_map(self, features: torch.Tensor, index: int, group_dim: int = 2) -> torch.Tensor:
        """Left action on a (..., |G|, ..., H, W) feature map: ``(u.f)(g, x) = f(u^-1 g, A_u^-1 x)``.

        The spatial part must be exact, so only elements whose rotation is a multiple of 90 degrees are
        accepted.
        """
        if index not in self.pixel_exact_elements:
            raise ValueError(f"element {index} of {self.name} is not a multiple of 90 degrees")
        u_inv = self.inverse(index)
        # new[g] = old[u^-1 g]
        permutation = self.cayley_table[u_inv]
        permuted = features.index_select(group_dim, permutation.to(features.device))
        return self.act_on_images(permuted, index)

    def undo_orbit(self, maps: torch.Tensor, **kwargs) -> torch.Tensor:
        """The inverse of :meth:`orbit` view by view: (B, |G|, ..., h, w) -> (B, |G|, ..., h, w) with
        ``g_i^-1`` applied to the spatial axes of entry ``i`` (exact for multiples of 90 degrees)."""
        return torch.stack(
            [self.act_on_images(maps[:, i], self.inverse(i), **kwargs) for i in range(self.order)], dim=1
        )

    def random_element(self, generator: torch.Generator | None = None) -> int:
        """A uniformly random element index (the rotation is drawn first, then the mirror bit)."""
        r = int(torch.randint(self.num_rotations, (), generator=generator))
        m = int(torch.randint(2, (), generator=generator)) if self.mirror else 0
        return self.index((r, m))

    # ---- kernels -------------------------------------------------------------------------------------
    def _require_exact(self, what: str) -> None:
        if not self.acts_exactly_on_pixels:
            raise ValueError(
                f"{what} needs a group acting exactly on the pixel grid (z2, p2, p4, mz2, p4m), got {self.name}"
            )

    def kernel_orbits(self, kernel_size: int) -> torch.Tensor:
        """Orbit index ``(k, k)`` (values 0..n_orbits-1) of the pixels of a k x k grid under the group.

        Two pixels share an index iff an element maps one onto the other, so a kernel that is constant on
        orbits is invariant under the group (3 orbits for k = 3 under p4 and p4m; 7 / 6 for k = 5).
        """
        self._require_exact("kernel_orbits")
        grid = torch.arange(kernel_size * kernel_size).reshape(kernel_size, kernel_size)
        images = torch.stack([self.act_on_images(grid, i) for i in range(self.order)])
        # Every pixel's orbit is {image[p] for image in images}; its minimum labels it canonically.
        return torch.unique(images.min(dim=0).values, return_inverse=True)[1]

    def symmetrize(self, kernel: torch.Tensor) -> torch.Tensor:
        """The orbit average ``mean_g g . kernel`` over the last two (spatial) dims: an invariant kernel."""
        self._require_exact("symmetrize")
        return torch.stack([self.act_on_images(kernel, i) for i in range(self.order)]).mean(0)

    # ---- escnn ---------------------------------------------------------------------------------------
    def gspace(self):
        """The escnn gspace whose fibre group is this group acting on the plane: C_n -> ``rot2dOnR2(n)``,
        D_n -> ``flipRot2dOnR2(n)``, z2 -> ``trivialOnR2()``, mz2 -> ``flip2dOnR2()`` (the mirror alone).
        escnn's regular fields order their channels as the elements here, and its mirror is this module's
        (``tests/gevit/test_groups.py``)."""
        from escnn import gspaces  # escnn is imported only by the models that need it

        if self.num_rotations == 1:
            return gspaces.flip2dOnR2() if self.mirror else gspaces.trivialOnR2()
        if self.mirror:
            return gspaces.flipRot2dOnR2(self.num_rotations)
        return gspaces.rot2dOnR2(self.num_rotations)


def get_group(name: str) -> Group:
    """The group called ``name`` (see the module docstring for the list)."""
    if isinstance(name, Group):
        return name
    key = str(name).lower()
    canonical = ALIASES.get(key, key)
    try:
        n, mirror = _SPECS[canonical]
    except KeyError:
        raise ValueError(f"unknown group {name!r}; choose one of {', '.join(GROUP_NAMES)}") from None
    return Group(canonical, n, mirror)
