"""GE-ViT / GSA-Nets networks: parameter counts, exact invariance, official weights."""

from __future__ import annotations

import pytest
import torch

import gevit
from gevit.groups import get_group
from gevit.models import GroupTransformer, load_official_weights
from gevit.rotations import rotate
from tests.support.mnist_digits import mnist_test_digits

SMALL = dict(
    num_channels=8,
    num_heads=2,
    block_sizes=[1, 2],
    crop_per_layer=[1, 1, 0],
    attention_window=3,
    image_size=12,
    attention_dropout=0.1,
    value_dropout=0.1,
)


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def random_net(group, encoding="gevit", **overrides):
    torch.manual_seed(0)
    net = GroupTransformer(group=group, encoding=encoding, **{**SMALL, **overrides}).double().eval()
    with torch.no_grad():  # random norms and biases too, so no symmetry comes from the initialisation
        for name, param in net.named_parameters():
            if "norm" in name or "bias" in name:
                param.normal_(0, 0.5)
    return net


def test_official_rotmnist_parameter_count():
    assert sum(p.numel() for p in GroupTransformer().parameters()) == 44_428
    assert sum(p.numel() for p in GroupTransformer(encoding="gsanet").parameters()) == 44_428


@pytest.mark.parametrize("group", ["p2", "p4", "p8", "p12", "p16", "p4m"])
def test_gevit_logits_are_exactly_invariant_to_the_right_angles_of_its_group(group):
    net = random_net(group)
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    logits = net(x)
    for k in (1, 2, 3) if get_group(group).contains_quarter_turn else (2,):
        assert rel_error(net(torch.rot90(x, k, (-2, -1))), logits) < 1e-10
    if get_group(group).mirror:
        assert rel_error(net(torch.flip(x, (-1,))), logits) < 1e-10
        assert rel_error(net(torch.flip(x, (-2,))), logits) < 1e-10


def test_official_rotmnist_config_is_invariant_at_28x28():
    net = GroupTransformer().double().eval()
    x = torch.randn(1, 1, 28, 28, dtype=torch.float64)
    assert rel_error(net(torch.rot90(x, 1, (-2, -1))), net(x)) < 1e-10


def test_p4_is_not_flip_invariant_and_gsanet_is_not_rot90_invariant():
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    ge = random_net("p4")
    assert rel_error(ge(torch.flip(x, (-1,))), ge(x)) > 1e-3  # a mirror is not in p4
    torch.manual_seed(0)
    gsa = GroupTransformer(encoding="gsanet").double().eval()  # official rotMNIST configuration
    x = torch.randn(1, 1, 28, 28, dtype=torch.float64)
    error = rel_error(gsa(torch.rot90(x, 1, (-2, -1))), gsa(x))
    assert error > 1e-4, error  # the GSA-Nets flaw, reproduced (the original measured 2-3e-3)


def test_non_right_angles_are_measured_not_exact():
    net = random_net("p8")
    x = torch.randn(4, 1, 12, 12, dtype=torch.float64)
    error = rel_error(net(rotate(x, 45.0)), net(x))
    assert 0 < error < 10  # reported by the robustness evaluation, never asserted small


def test_intermediate_features_rotate_and_permute():
    group = get_group("p4")
    net = random_net("p4")
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    _, extras = net(x, return_intermediates=True)
    _, rotated = net(torch.rot90(x, 1, (-2, -1)), return_intermediates=True)
    for before, after in zip(extras["features"], rotated["features"]):
        assert rel_error(after, group.act_on_feature_map(before, 1)) < 1e-10
    assert len(extras["attention"]) == 4  # lifting + 3 group layers
    assert torch.allclose(net(x, return_intermediates=True)[0], net(x))


def test_training_mode_runs_backward():
    net = GroupTransformer(group="p4", **SMALL).train()
    out = net(torch.randn(2, 1, 12, 12))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown group"):
        GroupTransformer(group="p5")
    with pytest.raises(ValueError, match="attention_window must be an odd int"):
        GroupTransformer(attention_window=4)
    with pytest.raises(ValueError, match="crop_per_layer has 2 entries"):
        GroupTransformer(crop_per_layer=[1, 1])
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\)"):
        GroupTransformer(**SMALL)(torch.rand(1, 3, 12, 12))


def _accuracy(net, images, labels, batch=50):
    with torch.no_grad():
        logits = torch.cat([net((chunk - 0.1307) / 0.3081) for chunk in images.split(batch)])
    return (logits.argmax(1) == labels).float().mean().item()


def _rotated_digits(n):
    images, labels = mnist_test_digits()
    angles = torch.rand(n, generator=torch.Generator().manual_seed(0)) * 360
    return rotate(images[:n], angles), labels[:n]


def test_official_p4_checkpoint_converts_and_classifies(shared_data):
    """Fast check of the conversion (the full reference below is marked slow)."""
    net = load_official_weights(
        GroupTransformer(group="p4", attention_window=5),
        shared_data / "checkpoints" / "official_gevit_rotmnist_p4_k5.pt",
    ).eval()
    images, labels = _rotated_digits(40)
    assert _accuracy(net, images.transpose(-1, -2), labels, batch=20) >= 0.7
    with torch.no_grad():
        x = torch.randn(1, 1, 28, 28)
        assert rel_error(net(torch.rot90(x, 1, (-2, -1))), net(x)) < 1e-5


@pytest.mark.slow
def test_official_p4_checkpoint_computes_the_original_function(shared_data):
    """Reference measured with the original code on the first 400 MNIST test digits rotated at random:
    55.75 % as they are, 81.50 % transposed (the orientation of the RotMNIST files it was trained on)."""
    net = load_official_weights(
        GroupTransformer(group="p4", attention_window=5),
        shared_data / "checkpoints" / "official_gevit_rotmnist_p4_k5.pt",
    ).eval()
    images, labels = _rotated_digits(400)
    assert abs(_accuracy(net, images, labels) - 0.5575) <= 0.005
    assert abs(_accuracy(net, images.transpose(-1, -2), labels) - 0.8150) <= 0.005


def test_official_p4m_checkpoint_converts_into_an_exact_model(shared_data):
    net = load_official_weights(
        GroupTransformer(group="p4m", attention_window=5, num_classes=2),
        shared_data / "checkpoints" / "official_gevit_rotmnist_p4m_k5.pt",
    ).eval()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        logits = net(x)
        assert rel_error(net(torch.flip(x, (-1,))), logits) < 1e-5
        assert rel_error(net(torch.rot90(x, 1, (-2, -1))), logits) < 1e-5


@pytest.mark.slow
def test_official_p4m_checkpoint_loads_into_the_corrected_model(shared_data):
    """The shared p4m weights are a 3-vs-8 classifier (its head has 2 outputs). The original p4m code is
    not exactly invariant; loaded into our exact model the weights still separate rotated 3s from 8s."""
    net = load_official_weights(
        GroupTransformer(group="p4m", attention_window=5, num_classes=2),
        shared_data / "checkpoints" / "official_gevit_rotmnist_p4m_k5.pt",
    ).eval()
    images, labels = _rotated_digits(400)
    keep = (labels == 3) | (labels == 8)
    images, labels = images[keep][:40], (labels[keep][:40] == 8).long()
    accuracy = _accuracy(net, images.transpose(-1, -2), labels, batch=8)
    assert accuracy > 0.75, accuracy


def test_official_checkpoint_of_another_config_is_a_clear_error(shared_data):
    net = GroupTransformer(group="p4", attention_window=5, num_channels=12)
    with pytest.raises(ValueError, match="does not match this GroupTransformer configuration"):
        load_official_weights(net, shared_data / "checkpoints" / "official_gevit_rotmnist_p4_k5.pt")


def test_model_init_from_loads_official_weights(shared_data):
    from lightning_modules import ImageClassifier

    path = shared_data / "checkpoints" / "official_gevit_rotmnist_p4_k5.pt"
    module = ImageClassifier(
        net=GroupTransformer(),
        num_classes=10,
        in_channels=1,
        image_size=28,
        init_from=str(path),
        input_mean=[0.1307],
        input_std=[0.3081],
    ).eval()
    reference = load_official_weights(GroupTransformer(), path).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(module(x), reference((x - 0.1307) / 0.3081), atol=1e-5)
    with pytest.raises(ValueError, match="VisionTransformer has no official weights"):
        ImageClassifier(
            net=gevit.models.VisionTransformer(), num_classes=10, in_channels=1, image_size=28, init_from=str(path)
        )
    with pytest.raises(TypeError, match="grup"):
        GroupTransformer(grup="p4")
