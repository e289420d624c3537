"""EqCvT and the plain CvT: parameter counts, exact invariance where it is proven, sampling-grid geometry."""

from __future__ import annotations

import pytest
import torch

from gevit.groups import get_group
from gevit.models import CvT, EqCvT, SymmetricConv2d
from gevit.models.eqcvt import symmetric_paddings

PUBLISHED_PARAMS = 64810
# The data sets' real sizes: RotMNIST 28x28x1, PCam 96x96x3, lensing 129x129x1.
REAL_SIZES = {"rotmnist": (28, 1), "pcam": (96, 3), "lensing": (129, 1)}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def relative_change(model: torch.nn.Module, x: torch.Tensor, transform) -> float:
    """max over the batch of ||f(gx) - f(x)|| / ||f(x)|| in eval mode."""
    model.eval()
    with torch.no_grad():
        reference = model(x)
        changed = model(transform(x))
    return float(((changed - reference).norm(dim=-1) / reference.norm(dim=-1)).max())


def rot(k):
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def flip(x):
    return torch.flip(x, dims=(-1,))


@pytest.fixture(scope="module")
def invariant_models():
    torch.manual_seed(0)
    return {name: EqCvT(image_size=size, in_channels=channels) for name, (size, channels) in REAL_SIZES.items()}


def test_published_parameter_count():
    assert n_params(EqCvT(invariant=False)) == PUBLISHED_PARAMS
    # The abstract's "3 trivial + 10 regular": the grey image as 3 trivial fields, 3x the R2Conv weights.
    assert n_params(EqCvT(invariant=False, input_fields=3)) == PUBLISHED_PARAMS + 2 * 180


def test_invariant_parameter_count_is_within_five_percent(invariant_models):
    count = n_params(invariant_models["lensing"])
    assert count == 62122
    assert abs(count - PUBLISHED_PARAMS) / PUBLISHED_PARAMS < 0.05


@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_eqcvt_is_exactly_rot90_invariant_at_real_sizes(invariant_models, name):
    size, channels = REAL_SIZES[name]
    model = invariant_models[name]
    x = torch.rand(2, channels, size, size)
    assert model(x).shape == (2, 2)
    for k in (1, 2, 3):
        assert relative_change(model, x, rot(k)) < 1e-5, (name, k)


def test_invariance_survives_training_steps():
    """Invariance is structural: it holds for any weights, e.g. after a few SGD steps that move BN statistics."""
    model = EqCvT(image_size=29, regular_fields=4, embed_dim=8, num_heads=2, head_dim=8, mlp_hidden_dim=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.rand(4, 1, 29, 29)), torch.tensor([0, 1, 0, 1])).backward()
        optimizer.step()
    x = torch.rand(2, 1, 29, 29)
    assert max(relative_change(model, x, rot(k)) for k in (1, 2, 3)) < 1e-5


@pytest.mark.parametrize("stem", [dict(stem_group="p8"), dict(stem_group="p16"), dict(stem_layers=2)])
def test_finer_or_deeper_escnn_block_stays_exactly_rot90_invariant(stem):
    """A C8/C16 block contains the quarter turns, which act exactly on the pixel grid; extra regular ->
    regular convolutions keep the block equivariant; the CvT stage is unchanged."""
    torch.manual_seed(0)
    model = EqCvT(image_size=28, num_classes=10, regular_fields=4, embed_dim=8, num_heads=2, head_dim=8, **stem)
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert max(relative_change(model, x, rot(k)) for k in (1, 2, 3)) < 1e-5
    assert model.stem_group == stem.get("stem_group", "p4")


def test_stem_group_must_contain_the_group():
    for bad in ("p12m", "z2", "p6"):  # unknown, or without the quarter turns
        with pytest.raises(ValueError, match="stem_group|unknown group"):
            EqCvT(image_size=29, stem_group=bad)
    with pytest.raises(ValueError, match="stem_group 'p8' must contain the network's group p4m"):
        EqCvT(image_size=29, group="p4m", stem_group="p8")
    with pytest.raises(ValueError, match="stem_layers"):
        EqCvT(image_size=29, stem_layers=0)


def test_d4_variant_is_invariant_to_rotations_and_flips():
    torch.manual_seed(0)
    model = EqCvT(image_size=96, in_channels=3, group="p4m")  # the PCam experiment's model
    x = torch.rand(2, 3, 96, 96)
    for transform in (rot(1), rot(2), flip, lambda t: flip(rot(1)(t))):
        assert relative_change(model, x, transform) < 1e-5


def test_published_model_is_not_exactly_invariant():
    """The faithful EqCvT is only approximately invariant: its CvT kernels are not rotation-symmetric."""
    torch.manual_seed(0)
    model = EqCvT(invariant=False)
    x = torch.rand(2, 1, 129, 129)
    errors = [relative_change(model, x, rot(k)) for k in (1, 2, 3)]
    assert min(errors) > 1e-5
    assert max(errors) < 0.5  # the escnn block still makes it roughly invariant


def test_plain_cvt_baseline_and_its_invariant_option():
    torch.manual_seed(0)
    plain, tied = CvT(image_size=28, num_classes=10), CvT(image_size=28, num_classes=10, invariant=True)
    x = torch.rand(2, 1, 28, 28)
    assert plain(x).shape == tied(x).shape == (2, 10)
    assert relative_change(plain, x, rot(1)) > 1e-3
    assert max(relative_change(tied, x, rot(k)) for k in (1, 2, 3)) < 1e-5
    assert n_params(CvT()) == 62018


def test_shapes_and_clear_errors():
    model = EqCvT(image_size=29, num_classes=5, embed_dim=8, depth=1, num_heads=2)
    assert model(torch.rand(3, 1, 29, 29)).shape == (3, 5)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 29, 29\), got \(3, 1, 28, 28\)"):
        model(torch.rand(3, 1, 28, 28))
    with pytest.raises(ValueError, match="group must be one of"):
        EqCvT(image_size=29, group="p8")
    assert EqCvT(image_size=29, group="D4").group == CvT(group="C4").group.replace("4", "4m")  # old spellings
    with pytest.raises(ValueError, match="only a 1-channel image can be repeated"):
        EqCvT(image_size=29, in_channels=3, input_fields=6)


def test_grid_geometry():
    # Faithful model at 129: escnn block 129 -> 125 (7x7, pad 1) -> 121 (5x5 Gaussian); tokens 61; keys 31.
    faithful = EqCvT(invariant=False)
    assert (faithful.field_size, faithful.cvt.token_size, faithful.cvt.kv_size) == (121, 61, 31)
    # Invariant at 28: 28 -> 24 -> 20 (even) -> 19 after the 2x2 mean -> tokens 9 (odd, padding 0) -> keys 5.
    small = EqCvT(image_size=28)
    assert isinstance(small.cvt.parity_pool, torch.nn.AvgPool2d)
    assert (small.field_size, small.cvt.token_size, small.cvt.kv_size) == (20, 9, 5)
    assert symmetric_paddings(121, 3, 2) == [1, 0]
    assert symmetric_paddings(60, 3, 2) == []
    assert symmetric_paddings(60, 3, 1) == [1, 0]


@pytest.mark.parametrize("kernel_size, group, orbits", [(3, "p4", 3), (3, "p4m", 3), (5, "p4", 7), (5, "p4m", 6)])
def test_symmetric_conv_kernels(kernel_size, group, orbits):
    assert int(get_group(group).kernel_orbits(kernel_size).max()) + 1 == orbits
    conv = SymmetricConv2d(4, 6, kernel_size, padding=kernel_size // 2, groups=2, group=group)
    kernel = conv.kernel()
    assert kernel.shape == (6, 2, kernel_size, kernel_size)
    assert torch.equal(kernel, torch.rot90(kernel, 1, dims=(-2, -1)))
    assert torch.equal(kernel, torch.flip(kernel, dims=(-1,))) == (group == "p4m" or kernel_size == 3)
    x = torch.rand(2, 4, 9, 9)
    torch.testing.assert_close(conv(torch.rot90(x, 1, dims=(-2, -1))), torch.rot90(conv(x), 1, dims=(-2, -1)))
