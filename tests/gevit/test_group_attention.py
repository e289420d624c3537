"""The group self-attention layers: fast path == plain reference, and exact equivariance."""

from __future__ import annotations

import pytest
import torch

from gevit.groups import get_group
from gevit.layers import GroupSelfAttention, LiftingSelfAttention
from gevit.layers.encodings import ENCODINGS, PositionalEncoding
from tests.support.reference_group_attention import reference_group, reference_lifting

# every rotation group the attention layers are built for, p2 (no quarter turn) included
EXACT_GROUPS = ["p2", "p4", "p8", "p12", "p16", "p4m"]


def randomise(layer):
    """Random weights everywhere (biases too) so that no symmetry comes from the initialisation."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, 0.5)
    return layer.double().eval()


@pytest.mark.parametrize("group", ["p4", "p4m", "p8"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_lifting_fast_path_equals_reference(group, encoding):
    layer = randomise(LiftingSelfAttention(group, 2, 4, 3, 2, patch_size=3, image_size=5, encoding=encoding))
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    fast, ref = layer(x), reference_lifting(layer, x)
    assert ((fast - ref).norm() / ref.norm()).item() < 1e-8  # offsets are stored in float32


@pytest.mark.parametrize("group", ["p4", "mz2"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_group_fast_path_equals_reference(group, encoding):
    n = get_group(group).order
    layer = randomise(GroupSelfAttention(group, 3, 6, 4, 2, patch_size=3, image_size=4, encoding=encoding))
    x = torch.randn(1, 3, n, 4, 4, dtype=torch.float64)
    fast, ref = layer(x), reference_group(layer, x)
    assert ((fast - ref).norm() / ref.norm()).item() < 1e-8  # offsets are stored in float32


def test_global_attention_sees_every_position():
    layer = randomise(LiftingSelfAttention("p4", 1, 4, 2, 1, patch_size=None, image_size=4))
    assert layer.patch_size == 7
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    _, probs = layer(x, return_attention=True)
    # every query has exactly 16 neighbours inside the image with non-zero weight
    assert ((probs > 0).sum(-1) == 16).all()
    assert torch.allclose(layer(x), reference_lifting(layer, x))


def symmetries(name):
    """The group and its non-identity elements that map the pixel grid onto itself: the ones an exact
    equivariance test can apply with ``torch.rot90`` / ``torch.flip`` (through the group's own actions)."""
    group = get_group(name)
    return group, group.pixel_exact_elements[1:]


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


EXACT_ENCODINGS = [name for name, encoding in ENCODINGS.items() if encoding.exactly_equivariant]


@pytest.mark.parametrize("encoding", EXACT_ENCODINGS)
@pytest.mark.parametrize("name", EXACT_GROUPS)
def test_lifting_layer_is_equivariant(name, encoding):
    group, elements = symmetries(name)
    layer = randomise(LiftingSelfAttention(name, 2, 4, 3, 2, patch_size=5, image_size=7, encoding=encoding))
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    for u in elements:
        assert rel_error(layer(group.act_on_images(x, u)), group.act_on_feature_map(layer(x), u)) < 1e-10


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("name", EXACT_GROUPS)
def test_group_layer_is_equivariant_exactly_when_its_encoding_says_so(name, encoding):
    group, elements = symmetries(name)
    layer = randomise(GroupSelfAttention(name, 3, 6, 4, 2, patch_size=3, image_size=5, encoding=encoding))
    x = torch.randn(1, 3, group.order, 5, 5, dtype=torch.float64)
    act = group.act_on_feature_map
    errors = [rel_error(layer(act(x, u)), act(layer(x), u)) for u in elements]
    if ENCODINGS[encoding].exactly_equivariant:
        assert max(errors) < 1e-10
    else:  # GSA-Nets: off by a small, measurable amount
        assert max(errors) > 1e-4


def test_an_unknown_encoding_is_an_error_not_another_encoding():
    with pytest.raises(ValueError, match="unknown positional encoding 'gevit2'; known: gevit, gsanet"):
        GroupSelfAttention("p4", 3, 6, 4, 2, patch_size=3, image_size=5, encoding="gevit2")


def test_a_new_encoding_is_one_class():
    class Transposed(PositionalEncoding):  # GE-ViT's spatial term with GSA-Nets' group term
        name, family = "transposed", "test"

        def offset_matrix(self, group, v, dtype=torch.float64):
            return ENCODINGS["gevit"].offset_matrix(group, v, dtype)

        def embedding_element(self, group, v, g, m):
            return ENCODINGS["gsanet"].embedding_element(group, v, g, m)

    layer = randomise(GroupSelfAttention("p4", 3, 6, 4, 2, patch_size=3, image_size=4, encoding=Transposed()))
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64)
    assert rel_error(layer(x), reference_group(layer, x)) < 1e-8


@pytest.mark.parametrize("cls,shape", [(LiftingSelfAttention, (2, 2, 6, 5)), (GroupSelfAttention, (2, 2, 4, 6, 5))])
def test_chunked_queries_compute_the_same_function(cls, shape):
    layer = randomise(cls("p4", 2, 6 if cls is GroupSelfAttention else 4, 3, 2, patch_size=3, image_size=6))
    x = torch.randn(*shape, dtype=torch.float64)
    whole = layer(x)
    layer.chunk_elements = 1  # one image row per chunk
    assert torch.allclose(layer(x), whole, atol=1e-12)
    out, probs = layer(x, return_attention=True)
    assert probs.shape[2] == 30 and torch.allclose(out, whole, atol=1e-12)


def test_layer_gradients_match_the_reference():
    layer = randomise(GroupSelfAttention("p4", 2, 6, 3, 2, patch_size=3, image_size=4))
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    (grad_fast,) = torch.autograd.grad(layer(x).square().sum(), x)
    (grad_ref,) = torch.autograd.grad(reference_group(layer, x).square().sum(), x)
    assert torch.allclose(grad_fast, grad_ref, atol=1e-9)
