"""GE-ViT from scratch: the optional init fixes (zero head, uniform positional biases) and the CPU-sized
configuration of conf/experiment/gevit_rotmnist_mini.yaml. The official defaults stay untouched (the
official-logits tests are in tests/gevit/test_gevit.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gevit.layers.group_attention import PositionMLP
from gevit.models import GroupTransformer

EXPERIMENT = Path(__file__).resolve().parents[2] / "conf" / "experiment" / "gevit_rotmnist_mini.yaml"


def cpu_config() -> dict:
    """The net keys of the experiment yaml (without the _target_), as a GroupTransformer would get them."""
    return OmegaConf.to_container(OmegaConf.load(EXPERIMENT).model.net)


def test_defaults_are_the_official_initialisation():
    torch.manual_seed(0)
    default = GroupTransformer()
    torch.manual_seed(0)
    explicit = GroupTransformer(
        zero_init_head=False,
        position_bias_init="zero",
        position_init_scale=1.0,
        head_channels=None,
        lifting_head_channels=None,
        lifting_num_heads=None,
    )
    for (name, a), b in zip(default.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.count_nonzero(m.inp.bias) == 0 for m in default.modules() if isinstance(m, PositionMLP))


def test_bad_position_bias_init_is_a_clear_error():
    with pytest.raises(ValueError, match="position_bias_init"):
        GroupTransformer(position_bias_init="normal")


def test_cpu_config_starts_at_ln10_with_small_finite_gradients():
    torch.manual_seed(0)
    net = GroupTransformer(**cpu_config())
    assert sum(p.numel() for p in net.parameters()) == 19_890
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = F.cross_entropy(net(x), y)
    assert abs(loss.item() - math.log(10)) < 1e-4
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    # with zero positional biases one of these was ~700 (LayerNorm of a zero vector, eps 1e-12)
    assert max(g.abs().max().item() for g in grads.values()) < 10
    assert all(m.inp.bias.abs().max() > 0 for m in net.modules() if isinstance(m, PositionMLP))


def test_cpu_config_is_exactly_rot90_invariant():
    torch.manual_seed(0)
    net = GroupTransformer(**{**cpu_config(), "image_size": 12}).double().eval()
    with torch.no_grad():  # a trained-looking head: the zero head would make the test trivial
        net.head.weight.normal_()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64)
    logits = net(x)
    for k in (1, 2, 3):
        assert ((net(torch.rot90(x, k, (-2, -1))) - logits).norm() / logits.norm()).item() < 1e-10


def test_head_width_options_set_the_attention_shapes():
    net = GroupTransformer(
        num_channels=8,
        num_heads=4,
        head_channels=3,
        lifting_num_heads=6,
        lifting_head_channels=2,
        block_sizes=[0, 1],
        crop_per_layer=[0],
        attention_window=3,
        image_size=8,
    )
    assert (net.lifting.num_heads, net.lifting.mid_channels, net.lifting.out_channels) == (6, 2, 8)
    attention = net.transformer[1].attention
    assert (attention.num_heads, attention.mid_channels, attention.out_channels) == (4, 3, 8)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_position_init_scale_multiplies_the_positional_tables():
    torch.manual_seed(0)
    plain = GroupTransformer(position_bias_init="uniform")
    torch.manual_seed(0)
    scaled = GroupTransformer(position_bias_init="uniform", position_init_scale=4.0)
    for a, b in zip(plain.modules(), scaled.modules()):
        if isinstance(a, PositionMLP):
            assert torch.allclose(b.out.weight, 4.0 * a.out.weight)
            assert torch.equal(b.inp.weight, a.inp.weight)


def test_head_channels_below_three_is_a_clear_error():
    with pytest.raises(ValueError, match="head_channels must be >= 3"):
        GroupTransformer(head_channels=2)
    with pytest.raises(ValueError, match="even mid_channels"):
        GroupTransformer(lifting_head_channels=3)
