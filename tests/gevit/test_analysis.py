"""gevit.analysis: the maths behind the figures, on tiny random networks built in-process (no training)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from gevit.analysis import (
    angles_every,
    attention_rollout,
    group_attention_maps,
    has_view_weights,
    layer_latents,
    model_facts,
    neighbourhood_attention,
    quarter_turn_element,
    rotation_sweep,
    view_weight_statistics,
    view_weights,
    vit_cls_attention,
)
from gevit.groups import get_group
from gevit.models import GroupTransformer, HybridViT, VisionTransformer
from gevit.posthoc.aggregators.lambda_equitune import LambdaAggregator
from gevit.posthoc.aggregators.mean import MeanAggregator
from gevit.posthoc.backbones import adapt
from gevit.posthoc.wrapper import PostHocInvariant

SIZE = 12


def tiny_gevit(group: str = "p4", encoding: str = "gevit", **options) -> GroupTransformer:
    """Lifting + two group blocks with a max-pool between them: 12x12 -> 12x12 -> 6x6, float64, eval mode."""
    options = {
        "num_channels": 8,
        "num_heads": 2,
        "block_sizes": [1, 1],
        "crop_per_layer": [0, 0],
        "attention_window": 3,
        "spatial_pooling": "mean",
        **options,
    }
    torch.manual_seed(0)
    return GroupTransformer(group=group, image_size=SIZE, encoding=encoding, **options).double().eval()


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=SIZE, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_hidden_dim=32
    ).eval()


def tiny_posthoc(aggregator: nn.Module) -> PostHocInvariant:
    return PostHocInvariant(adapt(tiny_vit(), in_channels=1, image_size=SIZE), "c4", aggregator).eval()


def lambda_aggregator() -> LambdaAggregator:
    aggregator = LambdaAggregator(embed_dim=16, hidden_dim=8)
    nn.init.normal_(aggregator.score[-1].weight, std=3.0)  # its last layer starts at zero (uniform weights)
    return aggregator


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ---- latents ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_gevit_latents_of_quarter_turns_are_rotated_and_shifted_latents(group, image):
    features, errors = layer_latents(tiny_gevit(group), image)
    order = 4 if group == "p4" else 8
    assert [tuple(f.shape) for f in features] == [(4, 8, order, 12, 12), (4, 8, order, 12, 12), (4, 8, order, 6, 6)]
    assert errors.shape == (3, 4) and float(errors.max()) < 1e-10
    assert float(errors[:, 0].max()) == 0.0  # the upright input against itself
    # not trivially zero: a quarter turn really changes the maps
    assert float((features[0][1] - features[0][0]).abs().max()) > 1e-3


def test_gsanet_latents_are_measured_not_equivariant(image):
    _, errors = layer_latents(tiny_gevit(encoding="gsanet"), image)
    assert float(errors.max()) > 1e-6


def test_latents_need_a_group_with_quarter_turns(image):
    with pytest.raises(ValueError, match="no 90-degree rotation"):
        layer_latents(tiny_gevit("z2"), image)


# ---- attention -------------------------------------------------------------------------------------------
def test_group_attention_maps_shapes_sums_and_rotation(image):
    net = tiny_gevit()
    layers = group_attention_maps(net, torch.cat([image, torch.rot90(image, 1, dims=(-2, -1))]))
    assert [(layer["side"], layer["window"]) for layer in layers] == [(12, 3), (12, 3), (6, 3)]
    for layer in layers:
        received, centre = layer["received"], layer["centre"]
        assert received.shape == (2, layer["side"], layer["side"]) and centre.shape == (2, 4, 3, 3)
        assert torch.allclose(received.sum(dim=(-2, -1)), torch.ones(2, dtype=received.dtype))
        assert torch.allclose(centre.sum(dim=(-2, -1)), torch.ones(2, 4, dtype=centre.dtype))
        # the attention a position receives rotates with the input (exactly equivariant GE-ViT)
        assert torch.allclose(received[1], torch.rot90(received[0], 1, dims=(-2, -1)), atol=1e-12)


def test_global_attention_covers_the_whole_map(image):
    net = tiny_gevit(attention_window="global", block_sizes=[1], crop_per_layer=[0])
    layers = group_attention_maps(net, image)
    assert [(layer["side"], layer["window"]) for layer in layers] == [(12, 23), (12, 23)]
    assert all(
        torch.allclose(layer["received"].sum(dim=(-2, -1)), torch.ones(1, dtype=torch.float64)) for layer in layers
    )


def test_neighbourhood_attention_reduces_group_layers_and_refuses_other_shapes():
    probs = torch.rand(2, 3, 16, 4, 4, 4 * 9).softmax(-1)  # (B, heads, HW, |G|_v, |G|_g, |G|_m k^2)
    reduced = neighbourhood_attention(probs, group_order=4)
    assert reduced.shape == (2, 3, 16, 4, 9) and torch.allclose(reduced.sum(-1), torch.ones(2, 3, 16, 4))
    with pytest.raises(ValueError, match="attention probabilities"):
        neighbourhood_attention(torch.rand(2, 3, 16, 4), group_order=4)


def test_attention_rollout_of_identity_is_identity_and_rows_sum_to_one():
    eye = torch.eye(5).expand(2, 3, 4, 5, 5)  # (B, depth, heads, N, N)
    assert torch.allclose(attention_rollout(eye), torch.eye(5).expand(2, 5, 5))
    rollout = attention_rollout(torch.rand(2, 3, 4, 5, 5).softmax(-1))
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 5))


def test_vit_cls_attention_lies_on_the_patch_grid():
    per_block, rollout = vit_cls_attention(tiny_vit(), torch.rand(3, 1, SIZE, SIZE))
    assert per_block.shape == (3, 2, 3, 3) and rollout.shape == (3, 3, 3)
    assert float(per_block.sum(dim=(-2, -1)).max()) <= 1 + 1e-6 and float(rollout.min()) >= 0  # CLS itself excluded


# ---- post-hoc view weights -----------------------------------------------------------------------------------
def test_view_weights_permute_with_the_views():
    net = tiny_posthoc(lambda_aggregator())
    images = torch.rand(5, 1, SIZE, SIZE)
    weights = view_weights(net, images)
    assert weights.shape == (5, 4) and torch.allclose(weights.sum(1), torch.ones(5))
    assert float(weights.std()) > 1e-3  # not uniform
    group = net.group
    for turns in range(4):
        u = quarter_turn_element(group, turns)
        turned = view_weights(net, torch.rot90(images, turns, dims=(-2, -1)))
        # view j of the turned image is view g_j ∘ u of the original
        expected = weights[:, [group.compose(j, u) for j in range(4)]]
        assert torch.allclose(turned, expected, atol=1e-6)


def test_view_weight_statistics_relative_to_the_upright_image():
    net = tiny_posthoc(lambda_aggregator())
    images, labels = torch.rand(12, 1, SIZE, SIZE), torch.randint(0, 10, (12,))
    stats = view_weight_statistics(net, images, labels, seed=3)
    assert stats["num_images"] == 12 and len(stats["per_image"]) == 12
    for row in stats["per_image"]:
        assert sum(row["weights"]) == pytest.approx(1.0, abs=1e-6)
        assert row["upright_view"] == (-row["pre_rotation_deg"] // 90) % 4
    for key in ("win_fraction", "relative_win_fraction", "mean_weight", "relative_mean_weight"):
        assert sum(stats[key]) == pytest.approx(1.0)
    assert stats["relative_win_fraction"][0] == pytest.approx(stats["upright_win_fraction"])
    assert stats["relative_mean_weight"][0] == pytest.approx(stats["upright_mean_weight"])
    # an invariant wrapper's weights relative to the upright image do not depend on the pre-rotations
    upright = view_weight_statistics(net, images, labels, pre_rotate=False)
    assert upright["win_fraction"] == upright["relative_win_fraction"]
    assert upright["relative_mean_weight"] == pytest.approx(stats["relative_mean_weight"], abs=1e-6)


def test_aggregators_without_view_weights_are_named():
    net = tiny_posthoc(MeanAggregator())
    assert not has_view_weights(net)
    with pytest.raises(ValueError, match="mean aggregator has no per-view weights"):
        view_weights(net, torch.rand(1, 1, SIZE, SIZE))


# ---- rotation sweeps -----------------------------------------------------------------------------------------
def test_rotation_sweep_of_an_invariant_gevit_repeats_every_quarter_turn(image):
    assert angles_every(90) == [0.0, 90.0, 180.0, 270.0] and len(angles_every(7.5)) == 48
    with pytest.raises(ValueError, match="positive"):
        angles_every(0)
    probs = rotation_sweep(tiny_gevit(), image, [0, 45, 90, 180, 270])
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(-1), torch.ones(5, dtype=probs.dtype))
    quarter = probs[[0, 2, 3, 4]]
    assert torch.allclose(quarter, quarter[:1].expand_as(quarter), atol=1e-10)


# ---- what a network is -------------------------------------------------------------------------------------
def test_model_facts_come_from_the_objects():
    gevit, gsanet = model_facts(tiny_gevit()), model_facts(tiny_gevit(encoding="gsanet"))
    assert (gevit.kind, gevit.name, gevit.group.name, gevit.attention) == ("gevit", "GE-ViT", "p4", "group")
    assert gevit.description == "GE-ViT p4, 3x3 local attention" and gsanet.name == "GSA-Nets"
    assert (
        "global attention"
        in model_facts(tiny_gevit(attention_window="global", block_sizes=[1], crop_per_layer=[0])).description
    )
    vit = model_facts(tiny_vit())
    assert (vit.kind, vit.name, vit.attention, vit.group) == ("vit", "ViT", "tokens", None)
    posthoc, mean = model_facts(tiny_posthoc(lambda_aggregator())), model_facts(tiny_posthoc(MeanAggregator()))
    assert (posthoc.kind, posthoc.name, posthoc.view_weights, mean.view_weights) == (
        "posthoc",
        "post-hoc lambda",
        True,
        False,
    )
    assert posthoc.group.order == 4
    hybrid = model_facts(
        HybridViT(
            group="p4",
            image_size=SIZE,
            stem="patch_embed",
            embed_patch_size=4,
            embed_dim=4,
            num_channels=8,
            num_heads=2,
            block_sizes=[1],
            attention_window=3,
        )
    )
    assert hybrid.kind == "hybrid" and hybrid.group.name == "p4" and hybrid.name == "hybrid GE-ViT"
    assert model_facts(nn.Linear(2, 2)).kind == "other"


def test_a_new_family_states_its_facts_on_its_class():
    class Rot90Pooled(nn.Module):
        model_kind, attention_maps, model_name = "rot90_pooled", None, "rot90-pooled"
        group = get_group("p4")

        @property
        def description(self) -> str:
            return f"{self.model_name} over {self.group.name}"

    facts = model_facts(Rot90Pooled())
    assert (facts.kind, facts.name, facts.description, facts.group.name) == (
        "rot90_pooled",
        "rot90-pooled",
        "rot90-pooled over p4",
        "p4",
    )
    assert (facts.attention, facts.view_weights) == (None, False)


def test_the_analysis_package_imports_no_lightning_hydra_or_plotting():
    forbidden = {"lightning", "pytorch_lightning", "hydra", "omegaconf", "matplotlib", "wandb"}
    package = Path(__file__).resolve().parents[2] / "gevit" / "analysis"
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            assert not {n.split(".")[0] for n in names} & forbidden, f"{source.name} imports {names}"
