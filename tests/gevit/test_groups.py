"""gevit.groups is the one home of the groups: every spelling, the escnn gspace, orbits, kernel symmetry."""

from __future__ import annotations

import pytest
import torch

from gevit.groups import GROUP_NAMES, get_group


@pytest.mark.parametrize(
    "spellings, canonical",
    [
        (("p4", "c4", "C4"), "p4"),
        (("p4m", "d4", "D4"), "p4m"),
        (("z2", "c1", "C1"), "z2"),
        (("mz2", "flip", "D1"), "mz2"),
        (("p8", "C8"), "p8"),
        (("p8m", "d8"), "p8m"),
    ],
)
def test_every_spelling_names_one_group(spellings, canonical):
    assert {get_group(name) for name in spellings} == {get_group(canonical)}
    assert get_group(spellings[-1]).name == canonical


def test_gspace_matches_the_group():
    assert get_group("p4").gspace().fibergroup.order() == 4
    assert get_group("D4").gspace().fibergroup.order() == 8
    assert get_group("z2").gspace().fibergroup.order() == 1
    assert get_group("mz2").gspace().fibergroup.order() == 2


def test_orbit_and_its_inverse():
    group = get_group("p4m")
    images = torch.rand(2, 3, 6, 6)
    views = group.orbit(images)
    assert views.shape == (2, 8, 3, 6, 6)
    torch.testing.assert_close(views[:, 1], torch.rot90(images, 1, (-2, -1)))
    torch.testing.assert_close(views[:, 4], torch.flip(images, (-1,)))
    torch.testing.assert_close(group.undo_orbit(views), images.unsqueeze(1).expand_as(views))


def test_kernel_orbits_and_symmetrize():
    p4, p4m = get_group("p4"), get_group("p4m")
    assert [int(p4.kernel_orbits(k).max()) + 1 for k in (3, 5)] == [3, 7]
    assert int(p4m.kernel_orbits(5).max()) + 1 == 6
    kernel = p4m.symmetrize(torch.rand(4, 2, 5, 5))
    assert torch.allclose(kernel, torch.rot90(kernel, 1, (-2, -1))) and torch.allclose(kernel, kernel.flip(-1))
    with pytest.raises(ValueError, match="acting exactly on the pixel grid"):
        get_group("p8").kernel_orbits(3)


def test_random_element_is_uniform_over_the_group():
    group = get_group("p4m")
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([group.random_element(generator) for _ in range(800)]), minlength=8)
    assert counts.min() > 60


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_every_listed_group_is_a_group(name):
    group = get_group(name)
    table = group.cayley_table
    identity = group.index((0, 0))
    assert torch.equal(table[identity], torch.arange(group.order))
    assert all(table[a, group.inverse(a)] == identity for a in range(group.order))
    assert torch.equal(table[table], table[:, table])  # (ab)c == a(bc) for every a, b, c
    # the matrices represent the group
    matrices = group.matrices()
    for a in range(group.order):
        for b in range(group.order):
            torch.testing.assert_close(matrices[a] @ matrices[b], matrices[int(table[a, b])])


@pytest.mark.parametrize("name", ["z2", "mz2", "p4", "p4m"])
def test_escnn_layers_on_the_gspace_are_equivariant_to_our_actions(name):
    """An R2Conv between regular fields commutes with act_on_feature_map: escnn's channel order and mirror
    axis are this module's."""
    from escnn import nn as enn

    group = get_group(name)
    gspace = group.gspace()
    field = enn.FieldType(gspace, [gspace.regular_repr])
    conv = enn.R2Conv(field, field, kernel_size=3, padding=1).eval()
    x = torch.randn(1, group.order, 7, 7)
    out = conv(enn.GeometricTensor(x, field)).tensor
    for index in range(group.order):
        moved = conv(enn.GeometricTensor(group.act_on_feature_map(x, index, group_dim=1), field)).tensor
        torch.testing.assert_close(moved, group.act_on_feature_map(out, index, group_dim=1), atol=1e-5, rtol=1e-4)
