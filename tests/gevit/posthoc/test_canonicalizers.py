"""The canonicalizers' mathematics: exact C4 / D4 invariance in eval mode (torch.rot90 / torch.flip, float64,
also on an attention-pooled backbone and behind the canonicalizer's crop / resize), the steerable angle turning
with the image, one transform per image for C8 / C16, the optimisation-based logits permuting as the regular
representation, training signals, and clear errors for bad options."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

from gevit.groups import Group, get_group
from gevit.posthoc import (
    CanonicalizerInput,
    DiscreteCanonicalization,
    GroupViews,
    LearnedCanonicalization,
    OptimizedCanonicalization,
    PostHocInvariant,
    SteerableCanonicalization,
    SteerableOrientationNet,
    adapt,
)
from gevit.rotations import rotate
from tests.support.posthoc import PooledCNN

CANONICALIZERS = {
    "discrete": LearnedCanonicalization,
    "optimized": OptimizedCanonicalization,
    "steerable": SteerableCanonicalization,
}
# Not the tiny test widths of the method sweep: the sizes a run uses, so the exactness holds where it matters.
OPTIONS = dict(width=4, depth=3, kernel_size=5, normalization="batch")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def randomized(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Move every parameter and the running statistics of the batch norms away from their initialisation
    (escnn's IIDBatchNorm2d keeps a mean only on its invariant components: only its variances move)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.normal_(0, 0.1)
    return module


def generators(group: Group) -> list[int]:
    return [group.index((1, 0))] * (group.num_rotations > 1) + [group.index((0, 1))] * group.mirror


@pytest.mark.parametrize("kind", list(CANONICALIZERS))
@pytest.mark.parametrize("group_name", ["c4", "d4", "flip"])
def test_every_canonicalizer_is_exactly_invariant_in_eval_on_an_attention_pooled_backbone(kind, group_name):
    """PCam-like colour images (32x32x3) with a position-dependent read-out; the canonicalizer sees a centre
    crop resized to 16x16; float64; rot90 and flip compared to 1e-12 (the backbone alone moves by > 1e-3)."""
    torch.manual_seed(0)
    backbone = adapt(PooledCNN("attention", in_chans=3, size=32), in_channels=3, image_size=32)
    factory = functools.partial(CANONICALIZERS[kind], input_crop=0.8, input_size=16, **OPTIONS)
    model = PostHocInvariant(backbone, group_name, factory, background=[-0.5, -0.4, -0.3]).double()
    randomized(model.aggregator)
    model.eval()
    group = get_group(group_name)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        plain = backbone.double()(x)
        assert relative_error(backbone(torch.rot90(x, 1, (-2, -1))), plain) > 1e-3
        reference = model(x)
        for index in generators(group):
            moved = model(group.act_on_images(x, index))
            assert relative_error(moved, reference) < 1e-12, (kind, group_name, index)
        assert relative_error(model(torch.rot90(x, 2, (-2, -1))), reference) < 1e-12 or not group.num_rotations > 1


@pytest.mark.parametrize("group_name", ["c4", "d4"])
def test_predicted_elements_are_equivariant(group_name):
    """predicted_elements(g x) = g predicted_elements(x) for every element of C4 / D4 (what canon_acc reads)."""
    group = get_group(group_name)
    views = GroupViews(group)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for kind, cls in CANONICALIZERS.items():
        torch.manual_seed(0)
        canonicalizer = randomized(cls(group, 1, **OPTIONS).double()).eval()
        predicted = canonicalizer.predicted_elements(x, views)
        for g in range(group.order):
            moved = canonicalizer.predicted_elements(group.act_on_images(x, g), views)
            assert torch.equal(moved, group.cayley_table[g][predicted]), (kind, g)


def test_the_steerable_vector_turns_with_the_image_at_every_angle(capsys):
    """v(R_a x) = R_a v(x): to the float32 rounding of escnn's sampled bases for quarter turns (the
    canonicalizer undoes those exactly anyway); measured, not asserted, for other angles (digit-like images:
    inside a disk, so rotating loses nothing)."""
    torch.manual_seed(0)
    net = randomized(SteerableOrientationNet("c4", 1, width=4, depth=3, kernel_size=5)).double().eval()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    disk = ((xx**2 + yy**2) < 0.6).double()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * disk
    with torch.no_grad():
        v, _ = net(x)
        turned, _ = net(torch.rot90(x, 1, (-2, -1)))
        assert torch.allclose(turned, torch.stack([-v[:, 1], v[:, 0]], 1), rtol=1e-4, atol=1e-6)
        errors = []
        for degrees in (15, 30, 45, 60, 75):
            moved, _ = net(rotate(x, degrees))
            change = torch.rad2deg(torch.atan2(moved[:, 1], moved[:, 0]) - torch.atan2(v[:, 1], v[:, 0]))
            errors.append(f"{degrees}: {float(((change - degrees + 180) % 360 - 180).abs().mean()):.1f}")
    with capsys.disabled():
        print("\nsteerable vector, random weights: mean |angle error| (degrees) at " + ", ".join(errors))


def test_discrete_c16_canonicalization_transforms_each_image_once(monkeypatch):
    """Eval makes one view per image (h*^-1 x), not all |G| then keeps one; the value is the same."""
    calls = []
    original = Group.act_on_images

    def counting(self, images, index, **kwargs):
        calls.append(len(images))
        return original(self, images, index, **kwargs)

    torch.manual_seed(0)
    canonicalizer = randomized(LearnedCanonicalization("c16", 1, **OPTIONS)).eval()
    views = GroupViews("c16")
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = canonicalizer.orientation_logits(x, views)
        expected = views(x)[torch.arange(7), get_group("c16").inverses[logits.argmax(-1)]]
        monkeypatch.setattr(Group, "act_on_images", counting)
        canonical = canonicalizer(x, views)
    assert sum(calls) == 7
    assert torch.allclose(canonical, expected, atol=1e-6)


def test_the_steerable_canonicalizer_rotates_each_image_once_whatever_the_group():
    """No |G| views: the backbone sees B images and the canonicalizer's passes never scale with |G|."""
    torch.manual_seed(0)
    for name in ("c4", "c16"):
        canonicalizer = SteerableCanonicalization(name, 1, width=2, depth=2, kernel_size=3).eval()
        seen = []
        handle = canonicalizer.orientation.register_forward_hook(lambda m, i, o: seen.append(len(i[0])) and None)
        with torch.no_grad():
            assert canonicalizer(torch.rand(5, 1, 28, 28), GroupViews(name)).shape == (5, 1, 28, 28)
        handle.remove()
        assert seen == [5, 5], name  # the quarter-turn pass and the residual-angle pass


def test_optimized_logits_permute_as_the_regular_representation():
    """o(g x)[g h] = o(x)[h] whatever the (non-equivariant) network, exactly (float64)."""
    for name in ("c4", "d4"):
        group = get_group(name)
        views = GroupViews(group)
        torch.manual_seed(0)
        canonicalizer = randomized(OptimizedCanonicalization(group, 1, **OPTIONS).double()).eval()
        x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
        with torch.no_grad():
            reference = canonicalizer.orientation_logits(x, views)
            for u in range(group.order):
                moved = canonicalizer.orientation_logits(group.act_on_images(x, u), views)
                assert torch.allclose(moved[:, group.cayley_table[u]], reference, atol=1e-12), (name, u)


def test_the_canonicalizers_learn_from_the_task_and_their_own_objectives():
    """Task-loss gradients reach every canonicalizer (the steerable one through its rotation angle, the
    mirror through the straight-through choice), and the prior / contrastive terms are finite and trainable."""
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    for kind, cls in CANONICALIZERS.items():
        for group in ("c4", "d4"):
            torch.manual_seed(0)
            canonicalizer = cls(group, 1, width=4, depth=2, kernel_size=5, prior_weight=1.0).train()
            views = GroupViews(group)
            canonical = canonicalizer(x, views)
            (canonical * torch.randn_like(canonical)).sum().backward()
            grads = [p.grad for p in canonicalizer.parameters() if p.grad is not None]
            assert grads and any(g.abs().sum() > 0 for g in grads), (kind, group)
            losses = canonicalizer.auxiliary_losses(x, views)
            assert "prior" in losses and all(torch.isfinite(v) for v in losses.values()), (kind, group)
            assert ("contrast" in losses) == (kind == "optimized")
            sum(losses.values()).backward()


def test_the_steerable_prior_turns_upright_images_to_the_identity():
    upright = torch.rand(8, 1, 20, 20, generator=torch.Generator().manual_seed(6))
    views = GroupViews("c4")
    torch.manual_seed(0)
    canonicalizer = SteerableCanonicalization("c4", 1, width=4, depth=2, kernel_size=5, prior_weight=1.0)
    optimizer = torch.optim.Adam(canonicalizer.parameters(), lr=0.05)
    start = canonicalizer.auxiliary_losses(upright, views)["prior"].item()
    for _ in range(30):
        optimizer.zero_grad()
        canonicalizer.auxiliary_losses(upright, views)["prior"].backward()
        optimizer.step()
    canonicalizer.eval()
    assert canonicalizer.auxiliary_losses(upright, views)["prior"].item() < min(start, 0.2)
    assert (canonicalizer.predicted_elements(upright, views) == 0).float().mean() > 0.5


def test_the_canonicalizer_input_commutes_with_the_symmetries_and_shrinks_large_images():
    """Crop + resize + pooling of a 96x96x3 (PCam) image: exact under rot90 / flip; the backbone sees 96x96."""
    resize = CanonicalizerInput(downsample=2, input_crop=0.8, input_size=32)
    x = torch.rand(2, 3, 96, 96, dtype=torch.float64)
    out = resize(x)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(resize(torch.rot90(x, 1, (-2, -1))), torch.rot90(out, 1, (-2, -1)), atol=1e-12)
    assert torch.allclose(resize(torch.flip(x, (-1,))), torch.flip(out, (-1,)), atol=1e-12)
    seen = {}
    backbone = adapt(PooledCNN("attention", in_chans=3, size=96), in_channels=3, image_size=96)
    model = PostHocInvariant(backbone, "p4m", functools.partial(SteerableCanonicalization, input_size=32)).eval()

    def record(name):
        return lambda module, inputs, output: seen.setdefault(name, tuple(inputs[0].shape)) and None

    model.backbone.model.stem.register_forward_hook(record("backbone"))
    model.aggregator.orientation.net.register_forward_hook(record("canonicalizer"))
    with torch.no_grad():
        model(torch.rand(2, 3, 96, 96))
    assert seen == {"backbone": (2, 3, 96, 96), "canonicalizer": (4, 3, 16, 16)}  # image and mirror, 32 / 2


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(width=0), "width=0"),
        (dict(width=-2), "width=-2"),
        (dict(depth=0), "depth=0"),
        (dict(kernel_size=4), "kernel_size=4"),
        (dict(normalization="layer"), "normalization='layer'"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(input_crop=0.0), "input_crop=0.0"),
        (dict(input_size=0), "input_size=0"),
        (dict(downsample=0), "downsample=0"),
    ],
)
def test_bad_canonicalizer_options_name_the_option(options, message):
    for cls in CANONICALIZERS.values():
        with pytest.raises(ValueError, match=rf"{message}.*model\.aggregator\."):
            cls("c4", 1, **options)
    with pytest.raises(ValueError, match=r"frequencies=0 \(model\.aggregator\.frequencies\)"):
        SteerableCanonicalization("c4", 1, frequencies=0)
    with pytest.raises(ValueError, match=r"vector_size=1 \(model\.aggregator\.vector_size\)"):
        OptimizedCanonicalization("c4", 1, vector_size=1)


@pytest.mark.parametrize("kind", list(CANONICALIZERS))
def test_state_dicts_do_not_depend_on_the_mode_and_reload_the_same_function(kind):
    """A state dict saved in eval mode (as Lightning does at validation end) loads strictly into a fresh
    training-mode canonicalizer, which then computes the same canonical images."""
    views = GroupViews("d4")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    trained = randomized(CANONICALIZERS[kind]("d4", 1, **OPTIONS)).eval()
    with torch.no_grad():
        expected = trained(x, views)
    torch.manual_seed(1)
    fresh = CANONICALIZERS[kind]("d4", 1, **OPTIONS).train()
    assert set(fresh.state_dict()) == set(trained.state_dict())
    fresh.load_state_dict(trained.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x, views), expected, atol=1e-6)


class _Blind(DiscreteCanonicalization):
    """A degenerate orientation net (equal logits for every element), as a dead ReLU net gives."""

    def orientation_logits(self, images, views):
        return images.new_zeros(images.shape[0], self.group.order)


@pytest.mark.parametrize("group", ["c4", "flip", "d4"])
def test_tied_orientation_logits_are_broken_invariantly(group):
    canonicalizer, views = _Blind(group).eval(), GroupViews(group)
    x = torch.rand(4, 1, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = canonicalizer(x, views)
    for g in range(get_group(group).order):
        assert torch.equal(canonicalizer(get_group(group).act_on_images(x, g), views), reference)
