"""The positional encodings of the group attention layers, one class each.

A group attention layer (``gevit/layers/group_attention.py``) scores a neighbour of a query through two
position-dependent terms, and an encoding says how both see the group (elements ``v``: the output element,
``g``: the query's, ``m``: the key's; ``A_v`` the 2 x 2 matrix of ``v``):

* the spatial term reads the normalised offset ``d`` of the neighbour as :meth:`offset_matrix` ``(v) @ d``;
* the group term reads the embedding of element :meth:`embedding_element` ``(v, g, m)``.

Both are written with the group's own operations (:meth:`gevit.groups.Group.compose`, ``inverse``,
``matrix``), so they hold for every group of ``gevit.groups``. An encoding whose two terms depend on
``(v, g, m)`` only through ``v^-1 g`` and ``v^-1 m`` makes the layers exactly equivariant
(:attr:`exactly_equivariant`), and a network of them exactly invariant after group pooling.

Adding an encoding: one subclass here, registered in :data:`ENCODINGS` (its ``name`` is what
``model.net.encoding=`` takes); the layers, the network's invariance facts, the analysis and the tests'
reference read it from here.
"""

from __future__ import annotations

import torch

from gevit.groups import Group


class PositionalEncoding:
    """How a group attention layer sees a neighbour's offset and the group elements (see the module docstring)."""

    name: str = ""  # the value of ``encoding=`` in configs
    family: str = ""  # the model a GroupTransformer with this encoding is (figures, tables)
    exactly_equivariant: bool = False

    def offset_matrix(self, group: Group, v: int, dtype=torch.float64) -> torch.Tensor:
        """(2, 2): the spatial term of output element ``v`` sees offset ``d`` as ``offset_matrix @ d``."""
        raise NotImplementedError

    def embedding_element(self, group: Group, v: int, g: int, m: int) -> int:
        """The group element whose embedding the group term adds for output ``v``, query ``g``, key ``m``."""
        raise NotImplementedError

    def offset_matrices(self, group: Group, dtype=torch.float64) -> torch.Tensor:
        """(|G|, 2, 2): :meth:`offset_matrix` of every output element."""
        return torch.stack([self.offset_matrix(group, v, dtype) for v in range(group.order)])

    def embedding_indices(self, group: Group) -> torch.Tensor:
        """(|G|_v, |G|_g, |G|_m) long: :meth:`embedding_element` of every triple."""
        n = group.order
        return torch.tensor(
            [[[self.embedding_element(group, v, g, m) for m in range(n)] for g in range(n)] for v in range(n)],
            dtype=torch.long,
        )

    def __repr__(self) -> str:
        return self.name


class GEViTEncoding(PositionalEncoding):
    """GE-ViT (exact): ``P_v(d) = P(A_v^-1 d)`` and ``idx = a b^-1 a`` with ``a = v^-1 g``, ``b = v^-1 m``
    (for rotations ``2g - m - v``): both depend on ``(v, g, m)`` only through ``v^-1 g`` and ``v^-1 m``."""

    name = "gevit"
    family = "GE-ViT"
    exactly_equivariant = True

    def offset_matrix(self, group: Group, v: int, dtype=torch.float64) -> torch.Tensor:
        return group.matrix(v, dtype).T  # orthogonal: the inverse is the transpose

    def embedding_element(self, group: Group, v: int, g: int, m: int) -> int:
        a = group.compose(group.inverse(v), g)
        b = group.compose(group.inverse(v), m)
        return group.compose(group.compose(a, group.inverse(b)), a)


class GSANetEncoding(PositionalEncoding):
    """GSA-Nets (faithful to its code): ``P_v(d) = P(A_v d)`` and ``idx = v m g^-1`` (``m + v - g`` for
    rotations): not equivariant, by a small amount — the flaw GE-ViT corrects."""

    name = "gsanet"
    family = "GSA-Nets"
    exactly_equivariant = False

    def offset_matrix(self, group: Group, v: int, dtype=torch.float64) -> torch.Tensor:
        return group.matrix(v, dtype)

    def embedding_element(self, group: Group, v: int, g: int, m: int) -> int:
        return group.compose(group.compose(v, m), group.inverse(g))


ENCODINGS: dict[str, PositionalEncoding] = {e.name: e for e in (GEViTEncoding(), GSANetEncoding())}


def get_encoding(encoding: str | PositionalEncoding) -> PositionalEncoding:
    """The encoding called ``encoding`` (an encoding object is returned as it is); an unknown name is an error."""
    if isinstance(encoding, PositionalEncoding):
        return encoding
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        raise ValueError(f"unknown positional encoding {encoding!r}; known: {', '.join(ENCODINGS)}") from None
