"""The fused CPU attention kernel computes the eager (reference) path's function: outputs and every
gradient in float64 (and gradcheck), float32 to ~1e-5, exact equivariance and invariance on both paths,
reproducible in-kernel dropout, the underflow guard, and the fallback when the kernel is unavailable."""

from __future__ import annotations

import logging

import pytest
import torch

from gevit.groups import get_group
from gevit.layers import GroupSelfAttention, LiftingSelfAttention
from gevit.layers.kernels import backend as attention_backend
from gevit.layers.kernels import cpu

pytestmark = pytest.mark.skipif(cpu.load() is None, reason=f"the CPU kernel cannot be built: {cpu.build_error()}")


def randomise(layer, dtype=torch.float64, scale=0.5):
    torch.manual_seed(0)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, scale)
    return layer.to(dtype).eval()


def run(layer, x, backend):
    layer.backend = backend
    try:
        return layer(x)
    finally:
        layer.backend = None


def outputs_and_grads(layer, x, backend):
    x = x.detach().requires_grad_(True)
    out = run(layer, x, backend)
    weights = torch.randn(out.shape, dtype=out.dtype)  # a generic cotangent (randn_like follows strides)
    grads = torch.autograd.grad((out * weights).sum(), [x] + list(layer.parameters()), allow_unused=True)
    return out, grads, weights


def assert_same_function(layer, x, tol):
    torch.manual_seed(1)
    fused, fused_grads, _ = outputs_and_grads(layer, x, "cpu")
    torch.manual_seed(1)
    eager, eager_grads, _ = outputs_and_grads(layer, x, "eager")
    assert ((fused - eager).norm() / eager.norm()).item() < tol
    scale = max(b.norm().item() for b in eager_grads if b is not None)
    for (name, _), a, b in zip([("input", None)] + list(layer.named_parameters()), fused_grads, eager_grads):
        if b is None:
            assert a is None or a.abs().max() == 0, name
            continue
        # floor for gradients that vanish analytically (key and encoding biases: softmax ignores shifts)
        assert (a - b).norm().item() <= tol * max(b.norm().item(), 1e-2 * scale), name


@pytest.mark.parametrize("group,encoding", [("p4", "gevit"), ("p4", "gsanet"), ("p4m", "gevit"), ("mz2", "gsanet")])
def test_group_kernel_equals_eager_in_float64(group, encoding):
    n = get_group(group).order
    layer = randomise(GroupSelfAttention(group, 3, 6, 4, 2, 3, image_size=5, encoding=encoding))
    assert_same_function(layer, torch.randn(2, 3, n, 5, 19, dtype=torch.float64), 1e-10)  # width 19: 2 tiles


@pytest.mark.parametrize(
    "group,window,height,width",
    [
        ("p8", 5, 3, 33),  # rows wider than two tiles; blocks of 4 query elements
        ("p12", 3, 2, 5),  # one partial tile, 12 = three blocks of 4
        ("z2", 3, 4, 4),  # one query element (the direct softmax), one whole tile
        ("p4", 7, 8, 6),  # rows narrower than the neighbourhood: scatter blocks of one or two neighbours
        ("p4m", 5, 4, 8),  # flattened tiles spanning two rows exactly
    ],
)
def test_kernel_tiles_and_blocks_equal_eager_in_float64(group, window, height, width):
    """Tiles are 16 consecutive positions of the flattened image and every contraction runs in blocks of
    4, 2 and 1: shapes that exercise each tail, neighbours that wrap into the next row, and the backward's
    scatter order."""
    n = get_group(group).order
    layer = randomise(GroupSelfAttention(group, 3, 6, 4, 2, window, image_size=max(height, width)))
    assert_same_function(layer, torch.randn(2, 3, n, height, width, dtype=torch.float64), 1e-10)


@pytest.mark.parametrize("group", ["p4", "p8"])
def test_lifting_kernel_equals_eager_in_float64(group):
    layer = randomise(LiftingSelfAttention(group, 2, 4, 3, 2, 5, image_size=7))
    assert_same_function(layer, torch.randn(2, 2, 7, 9, dtype=torch.float64), 1e-10)


def test_global_attention_kernel_equals_eager():
    layer = randomise(GroupSelfAttention("p4", 2, 6, 3, 1, None, image_size=4))
    assert_same_function(layer, torch.randn(1, 2, 4, 4, 4, dtype=torch.float64), 1e-10)


def test_float32_kernel_equals_eager():
    group = randomise(GroupSelfAttention("p4", 4, 6, 5, 3, 5, image_size=9), torch.float32)
    assert_same_function(group, torch.randn(2, 4, 4, 9, 9), 2e-5)
    lifting = randomise(LiftingSelfAttention("p4", 1, 10, 20, 9, 5, image_size=12), torch.float32)
    assert_same_function(lifting, torch.randn(2, 1, 12, 12), 2e-5)


def test_gradcheck_in_float64():
    group = randomise(GroupSelfAttention("p4", 2, 3, 2, 1, 3, image_size=3))
    group.backend = "cpu"
    x = torch.randn(1, 2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(group, (x,), eps=1e-6, atol=1e-8, fast_mode=True)
    lifting = randomise(LiftingSelfAttention("p4", 2, 2, 2, 1, 3, image_size=4))
    lifting.backend = "cpu"
    assert torch.autograd.gradcheck(
        lifting,
        (torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True),),
        eps=1e-6,
        atol=1e-8,
        fast_mode=True,
    )


def test_gradcheck_of_the_kernel_with_a_fixed_dropout_mask():
    """With fixed seeds the in-kernel mask is a fixed function: the backward regenerates it (a width
    that is not a whole vector tile: the kernel pads rows itself)."""
    torch.manual_seed(0)
    b, heads, c, g, h, w, k, p2 = 1, 2, 3, 2, 2, 13, 3, 2
    qkv = torch.randn(b, 3, heads, c, g, h, w, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, heads, c, dtype=torch.float64, requires_grad=True)
    ptab = torch.randn(g, k * k, p2, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(g + 1, c - p2, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, g + 1, (g, g, g), dtype=torch.int32)

    def f(*args):
        return cpu.FusedAttention.apply(*args, idx, k, 0.3, (12345, 678))

    assert torch.autograd.gradcheck(f, (qkv, bias, ptab, emb), eps=1e-6, atol=1e-8, fast_mode=True)


def equivariance_error(layer, x, group, u, backend):
    layer.backend = backend
    transformed = group.act_on_feature_map(x, u) if x.ndim == 5 else group.act_on_images(x, u)
    out, expected = layer(transformed), group.act_on_feature_map(layer(x), u)
    layer.backend = None
    return ((out - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("backend", ["cpu", "eager"])
@pytest.mark.parametrize("name", ["p2", "p4", "p8", "p4m"])
def test_layers_are_equivariant_on_every_path(name, backend):
    group = get_group(name)
    elements = group.pixel_exact_elements[1:]
    lifting = randomise(LiftingSelfAttention(name, 2, 4, 3, 2, 5, image_size=7))
    layer = randomise(GroupSelfAttention(name, 3, 6, 4, 2, 3, image_size=6))
    for u in elements:
        assert equivariance_error(lifting, torch.randn(1, 2, 7, 7, dtype=torch.float64), group, u, backend) < 1e-10
        x = torch.randn(1, 3, group.order, 6, 6, dtype=torch.float64)
        assert equivariance_error(layer, x, group, u, backend) < 1e-10


@pytest.mark.parametrize("backend", ["cpu", "eager"])
def test_network_logits_are_invariant_on_every_path(backend):
    from tests.gevit.test_gevit import random_net

    net = random_net("p4m")
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    attention_backend.set_attention_backend(backend)
    try:
        logits = net(x)
        for transformed in (torch.rot90(x, 1, (-2, -1)), torch.flip(x, (-1,))):
            assert ((net(transformed) - logits).norm() / logits.norm()).item() < 1e-10
    finally:
        attention_backend.set_attention_backend(None)


def test_in_kernel_dropout_is_reproducible_and_unbiased():
    layer = randomise(GroupSelfAttention("p4", 3, 6, 4, 2, 3, image_size=6), torch.float32).train()
    layer.attention_dropout = 0.5
    layer.backend = "cpu"
    x = torch.randn(2, 3, 4, 6, 6)
    torch.manual_seed(3)
    a = layer(x)
    torch.manual_seed(3)
    b = layer(x)
    c = layer(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    mean = torch.stack([layer(x) for _ in range(40)]).mean(0)
    expected = layer.eval()(x)
    assert ((mean - expected).norm() / expected.norm()).item() < 0.2  # inverted dropout keeps the mean


def test_official_checkpoint_runs_fused_and_matches_eager(shared_data, caplog):
    """Trained weights on rotated digits never trip the underflow guard; logits match the eager path."""
    from gevit.models import GroupTransformer, load_official_weights
    from gevit.rotations import rotate
    from tests.support.mnist_digits import mnist_test_digits

    net = load_official_weights(
        GroupTransformer(group="p4"), shared_data / "checkpoints" / "official_gevit_rotmnist_p4_k5.pt"
    ).eval()
    images, _ = mnist_test_digits()
    angles = torch.rand(4, generator=torch.Generator().manual_seed(0)) * 360
    x = (rotate(images[:4], angles).transpose(-1, -2) - 0.1307) / 0.3081
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        attention_backend.set_attention_backend("cpu")
        fused = net(x)
        attention_backend.set_attention_backend("eager")
        eager = net(x)
        attention_backend.set_attention_backend(None)
    assert "underflow" not in caplog.text
    assert ((fused - eager).norm() / eager.norm()).item() < 1e-5


def test_underflow_guard_falls_back_to_eager(caplog):
    """Huge logits whose content and spatial maxima sit at different neighbours underflow the factorised
    normaliser in float32: the call runs on the eager path instead of returning NaN."""
    layer = randomise(GroupSelfAttention("p4", 2, 6, 3, 1, 3, image_size=5), torch.float32, scale=30.0)
    x = torch.randn(1, 2, 4, 5, 5) * 10
    with caplog.at_level(logging.WARNING):
        fused = run(layer, x, "cpu")
    eager = run(layer, x, "eager")
    assert "underflow" in caplog.text
    assert torch.isfinite(fused).all() and torch.allclose(fused, eager)


def test_fallback_when_the_kernel_is_unavailable(monkeypatch, caplog):
    layer = randomise(GroupSelfAttention("p4", 3, 6, 4, 2, 3, image_size=5))
    x = torch.randn(1, 3, 4, 5, 5, dtype=torch.float64)
    monkeypatch.setattr(cpu, "load", lambda verbose=False: None)
    monkeypatch.setattr(cpu, "build_error", lambda: "simulated: no compiler")
    monkeypatch.setattr(attention_backend, "_announced", set())
    with caplog.at_level(logging.INFO, logger="gevit.layers.kernels.backend"):
        out = layer(x)
    assert "eager path" in caplog.text and "unavailable" in caplog.text
    assert torch.allclose(out, run(layer, x, "eager"))
    with pytest.raises(RuntimeError, match="simulated: no compiler"):
        run(layer, x, "cpu")
    with pytest.raises(ValueError, match="GEVIT_ATTENTION must be one of"):
        monkeypatch.setenv("GEVIT_ATTENTION", "fast")
        layer(x)


def test_extension_cache_is_shared_by_checkouts_at_other_paths(tmp_path, monkeypatch):
    """The build key and folder depend on what the build depends on, not on where the checkout lies: a
    copy of the kernel package elsewhere finds the same complete build and imports it without building."""
    import importlib.util
    import shutil

    copy = tmp_path / "elsewhere" / "kernels"
    shutil.copytree(cpu.SOURCE.parents[1], copy, ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.spec_from_file_location("gevit_kernels_copy", copy / "cpu.py")
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    assert other.SOURCE != cpu.SOURCE and other.build_directory() == cpu.build_directory()
    monkeypatch.setattr(other, "_build", lambda *args: pytest.fail("a complete build was rebuilt"))
    assert other.load().forward.__doc__ == cpu.load().forward.__doc__
