"""Post-hoc invariant wrappers: invariance of every method of conf/model/aggregator/ x group x regime (also on
backbones whose pooling depends on position), one batched backbone call, regimes, formulas, backbones, and
the two-stage pipeline through train.py."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import train as train_script
from gevit.groups import get_group
from gevit.posthoc import (
    GroupViews,
    PostHocInvariant,
    adapt,
    check_backbone,
    disk_mask,
    resnet_backbone,
    timm_backbone,
    vit_backbone,
)
from gevit.posthoc.backbones import TimmStyleBackbone, TorchvisionResNetBackbone
from lightning_modules import PostHocClassifier
from lightning_modules.posthoc import aggregator_catalog, aggregator_config
from runkit.checkpoint_loading import checkpoint_backbone, network_from_checkpoint
from tests.support.compose import CONF_DIR, TINY_VIT, compose_config

REPO = Path(__file__).resolve().parents[2]
# The folders are the lists: every method and backbone the configs offer is tested.
CATALOG = aggregator_catalog()
AGGREGATORS = list(CATALOG)
LEARNED = {name for name, cls in CATALOG.items() if cls.learned}
BACKBONES = sorted(p.stem for p in (CONF_DIR / "model" / "backbone").glob("*.yaml"))
EXACT_GROUPS = ["c4", "flip", "d4"]
MNIST = dict(num_classes=10, in_channels=1, image_size=28, input_mean=(0.1307,), input_std=(0.3081,))
# A deliberately non-invariant random backbone, without dropout so that training-mode forwards are
# deterministic.
TINY_BACKBONE = functools.partial(vit_backbone, embed_dim=16, depth=1, num_heads=2, mlp_hidden_dim=32, dropout=0.0)
TINY_BACKBONE_OVERRIDES = ["model/backbone=vit"] + [o.replace("model.net.", "model.backbone.") for o in TINY_VIT]
# Small widths keep the tests fast; no dropout (training-mode forwards must be deterministic to compare).
SMALL_OPTIONS = {
    "hidden_dim": 8,
    "attn_dim": 8,
    "depth": 1,
    "num_heads": 2,
    "mlp_hidden_dim": 16,
    "dropout": 0.0,
    "width": 2,
    "kernel_size": 3,
}


def aggregator(name: str, **options):
    """The partial of conf/model/aggregator/<name>.yaml with the small options it has, and ``options``."""
    config = aggregator_config(name)
    config.update({k: v for k, v in SMALL_OPTIONS.items() if config.get(k) is not None})
    config.update(options)
    return hydra.utils.instantiate(config)


def regimes_of(name: str) -> list[str]:
    return ["aggregator_only", "mlp", "backbone_only", "full"] if name in LEARNED else ["zero_shot", "mlp", "full"]


def make(
    name: str = "mean", group: str = "c4", regime: str = "zero_shot", backbone=None, data=MNIST, **options
) -> PostHocClassifier:
    model = PostHocClassifier(
        backbone=backbone or TINY_BACKBONE, aggregator=aggregator(name, **options), group=group, regime=regime, **data
    )
    with torch.no_grad():  # move learned aggregators away from their mean-like initialisation
        for p in model.net.aggregator.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def generators(group_name: str) -> list[int]:
    """Indices of generators of the group: invariance under them is invariance under the whole group."""
    group = get_group(group_name)
    return [group.index((1, 0))] * (group.num_rotations > 1) + [group.index((0, 1))] * group.mirror


def worst_invariance_error(model, images: torch.Tensor, group_name: str) -> float:
    """The largest relative change of the logits under the group's generators."""
    group = get_group(group_name)
    with torch.no_grad():
        reference = model(images)
        return max(relative_error(model(group.act_on_images(images, i)), reference) for i in generators(group_name))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))


# ---- invariance ---------------------------------------------------------------------------------------
def test_the_random_backbone_is_not_invariant(images):
    backbone = make().net.backbone.eval()
    assert worst_invariance_error(backbone, images, "d4") > 1e-2


@pytest.mark.parametrize("group", EXACT_GROUPS)
@pytest.mark.parametrize("name", AGGREGATORS)
def test_logits_are_invariant_for_exact_groups_in_every_regime(name, group, images):
    for regime in regimes_of(name):
        model = make(name, group, regime)
        for mode in (True, False):  # the training-mode forward of this regime, and eval
            model.train(mode)
            error = worst_invariance_error(model, images, group)
            assert error < 1e-5, (name, group, regime, mode, error)


class PooledCNN(nn.Module):
    """A tiny CNN with timm's API whose read-out depends on position: ``attention`` (timm's AttentionPool2d
    with a learned positional embedding, as CLIP's RN50) or ``flatten`` (the map flattened into a Linear)."""

    def __init__(self, pooling: str, num_classes: int = 10, in_chans: int = 1, size: int = 16, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
        )
        if pooling == "attention":
            self.pool = timm.layers.AttentionPool2d(width, feat_size=size // 4, num_heads=2, head_dim=4)
            self.num_features = width
        else:
            self.pool = nn.Flatten()
            self.num_features = width * (size // 4) ** 2
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x):
        return self.stem(x)

    def forward_head(self, x, pre_logits: bool = False):
        embedding = self.pool(x)
        return embedding if pre_logits else self.fc(embedding)

    def get_classifier(self):
        return self.fc


@pytest.mark.parametrize("pooling", ["attention", "flatten"])
def test_every_method_is_invariant_on_backbones_whose_pooling_depends_on_position(pooling):
    """Spatial aggregators on such backbones read out through the group-symmetrised pooling; float64."""
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    data = dict(MNIST, image_size=16)
    for name in AGGREGATORS:
        for group in ("c4", "d4"):
            torch.manual_seed(0)
            backbone = adapt(PooledCNN(pooling), in_channels=1, image_size=16)
            assert backbone.spatial_features and not backbone.invariant_pooling
            model = make(name, group, regimes_of(name)[0], backbone=backbone, data=data).double().eval()
            with torch.no_grad():
                reference = model(x)
                for index in generators(group):
                    error = relative_error(model(get_group(group).act_on_images(x, index)), reference)
                    assert error < 1e-12, (pooling, name, group, index, error)


def test_the_backbone_pooling_as_is_would_not_be_invariant():
    """spatial_pooling=backbone (the original EquiAttention read-out) on an attention pool: measurably not
    invariant, which is why auto symmetrises it."""
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.manual_seed(0)
    backbone = adapt(PooledCNN("attention"), in_channels=1, image_size=16)
    model = PostHocInvariant(backbone, "c4", aggregator("equiattention"), spatial_pooling="backbone").double().eval()
    for p in model.aggregator.parameters():
        p.data.normal_(0, 0.5)
    assert model.aggregator.level == "spatial" and not model.symmetrize_pooling
    with torch.no_grad():
        assert relative_error(model(torch.rot90(x, 1, (-2, -1))), model(x)) > 1e-6


@pytest.mark.parametrize("group", EXACT_GROUPS)
def test_spatial_equiattention_is_invariant_on_cnn_feature_maps(group):
    """Values are the last feature maps with g^-1 applied (2x2 maps from 64x64 inputs): exact for
    C4 / flip / D4, also in training mode, where BatchNorm normalises over all B·|G| views."""
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    model = make(
        "equiattention",
        group,
        "full",
        backbone=functools.partial(timm_backbone, model_name="resnet18"),
        data=dict(MNIST, image_size=64),
        features="spatial",
    )
    assert model.net.aggregator.level == "spatial" and model.net.backbone.invariant_pooling
    assert not model.net.symmetrize_pooling  # global average pooling is invariant: used as is
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            reference = model(x)
            for index in generators(group):
                error = relative_error(model(get_group(group).act_on_images(x, index)), reference)
                assert error < 1e-5, (mode, index, error)


def test_torchvision_resnet_adapter_gives_spatial_maps_for_equiattention():
    backbone = adapt(torchvision.models.resnet18(num_classes=10), in_channels=3, image_size=64)
    assert isinstance(backbone, TorchvisionResNetBackbone) and backbone.spatial_features and backbone.invariant_pooling
    model = PostHocInvariant(backbone, "d4", aggregator("equiattention")).eval()
    for p in model.aggregator.parameters():
        p.data.normal_(0, 0.5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        for index in generators("d4"):
            assert relative_error(model(get_group("d4").act_on_images(x, index)), reference) < 1e-5


def test_interpolated_groups_report_their_invariance_error(images, capsys):
    """C8 / C16 rotate by bilinear interpolation, so invariance is approximate: measured (under the rotation
    by 360/n degrees, the group's generator), not asserted."""
    rows = []
    for group in ("c8", "c16"):
        rotated = get_group(group).act_on_images(images, 1)
        for name in ["plain backbone"] + AGGREGATORS:
            torch.manual_seed(0)  # the same random backbone for every aggregator
            model = make("mean" if name == "plain backbone" else name, group, regimes_of(name)[0]).eval()
            if name == "plain backbone":
                model = model.net.backbone
            with torch.no_grad():
                error = relative_error(model(rotated), model(images))
            assert error == error  # finite, not NaN
            rows.append(f"{group} {name}: {error:.2e}")
    with capsys.disabled():
        print(
            "\ninvariance error under rotation by 360/n degrees (bilinear), random ViT, random images:\n  "
            + "\n  ".join(rows)
        )


def test_dropout_makes_training_forwards_invariant_in_distribution_only(images):
    """With dropout on (the transformer's default 0.1) eval is exact; a training forward is random."""
    model = make("transformer", "c4", "aggregator_only", dropout=0.5)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(images), model(images))
    assert worst_invariance_error(model.eval(), images, "c4") < 1e-5


# ---- one batched backbone call ------------------------------------------------------------------------
def _batch_sizes(model, first_layer, x) -> list[int]:
    batches = []
    handle = first_layer.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    assert logits.shape == (len(x), 10)
    return batches


@pytest.mark.parametrize("name, source", [("mean", "vit"), ("most_probable", "vit"), ("equiattention", "timm")])
def test_the_views_go_through_the_backbone_in_one_call(name, source):
    backbone = TINY_BACKBONE if source == "vit" else functools.partial(timm_backbone, model_name="resnet18")
    data = MNIST if source == "vit" else dict(MNIST, image_size=64)
    model = make(name, "d4", regimes_of(name)[0], backbone=backbone, data=data).eval()
    first = model.net.backbone.model.patch_embed if source == "vit" else model.net.backbone.model.conv1
    assert _batch_sizes(model, first, torch.rand(5, 1, data["image_size"], data["image_size"])) == [5 * 8]


def test_canonicalization_runs_the_backbone_once_per_image():
    model = make("canonicalization", "d4", "aggregator_only").eval()
    assert _batch_sizes(model, model.net.backbone.model.patch_embed, torch.rand(5, 1, 28, 28)) == [5]


# ---- regimes ------------------------------------------------------------------------------------------
def test_regimes_freeze_the_right_parts_and_keep_them_in_eval_mode():
    for regime, name in [
        ("zero_shot", "mean"),
        ("aggregator_only", "lambda"),
        ("mlp", "lambda"),
        ("backbone_only", "lambda"),
        ("full", "mean"),
    ]:
        model = make(name, "c4", regime).train()
        net = model.net
        trainable = {id(p) for p in model.trainable_parameters()}
        assert trainable == {id(p) for p in model.parameters() if p.requires_grad}, regime
        head, agg = set(map(id, net.backbone.head.parameters())), set(map(id, net.aggregator.parameters()))
        everything = {id(p) for p in model.parameters()}
        expected = {
            "zero_shot": set(),
            "aggregator_only": agg,
            "mlp": head | agg,
            "backbone_only": everything - agg,
            "full": everything,
        }[regime]
        assert trainable == expected, regime
        assert net.backbone.model.blocks[0].training == (regime in ("full", "backbone_only"))
        assert net.backbone.head.training == (regime in ("mlp", "full", "backbone_only"))
        assert net.aggregator.training == (regime not in ("zero_shot", "backbone_only"))
        counts = model.parameter_counts()
        assert counts["model/params_trainable"] == sum(p.numel() for p in model.trainable_parameters())
        assert (
            counts["model/params_backbone"] + counts["model/params_head"] + counts["model/params_aggregator"]
            == counts["model/params"]
        )
        model.eval()
        assert not any(m.training for m in model.modules())


def test_mlp_trains_the_whole_classification_head_of_a_timm_vit():
    """A timm ViT's head is its final LayerNorm + Linear, as the original's ``mlp_head``."""
    vit = functools.partial(
        timm_backbone,
        model_name="vit_tiny_patch16_224",
        model_kwargs={"img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 16, "num_heads": 2},
    )
    model = make("mean", "c4", "mlp", backbone=vit)
    timm_vit = model.net.backbone.model
    expected = {id(p) for m in (timm_vit.norm, timm_vit.head) for p in m.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == expected
    assert model.parameter_counts()["model/params_head"] == sum(
        p.numel() for m in (timm_vit.norm, timm_vit.head) for p in m.parameters()
    )


def test_regime_refusals_are_clear(tmp_path):
    with pytest.raises(ValueError, match="regime=aggregator_only"):
        make("lambda", regime="zero_shot")
    with pytest.raises(ValueError, match="has no parameters: use model.regime=zero_shot"):
        make("mean", regime="aggregator_only")
    with pytest.raises(ValueError, match="use model.regime=full"):
        make("mean", regime="backbone_only")
    with pytest.raises(ValueError, match="unknown regime 'linear'"):
        make("mean", regime="linear")
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="aggregator/median"):
        compose_config(["model=posthoc", "model/aggregator=median"], tmp_path)


def test_training_the_head_leaves_the_frozen_backbone_untouched(images):
    model = make("mean", "c4", "mlp").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 2, 3])).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".head." in k for k in changed)


def test_state_dict_round_trip_and_dtype_moves(images):
    for name in ("equiattention", "canonicalization"):
        model = make(name, "d4", "mlp").eval()
        again = make(name, "d4", "mlp").eval()
        again.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert torch.equal(again(images), model(images))
            double = model.to(torch.float64)(images.double())
            assert double.dtype == torch.float64 and relative_error(double.float(), again(images)) < 1e-5


# ---- views ----------------------------------------------------------------------------------------------
def test_flip_is_a_true_mirror_and_d4_holds_the_eight_symmetries(images):
    views = GroupViews("flip")(images)
    assert torch.equal(views[:, 1], images.flip(-1))
    assert not torch.equal(views[:, 1], torch.rot90(images, 2, (-2, -1)))
    d4 = GroupViews("d4")(images)
    expected = [torch.rot90(images, k, (-2, -1)) for k in range(4)] + [
        torch.rot90(images.flip(-1), k, (-2, -1)) for k in range(4)
    ]
    for i, view in enumerate(expected):
        assert torch.equal(d4[:, i], view)


def test_views_of_normalised_images_are_normalised_views_of_raw_images(images):
    mean, std = 0.1307, 0.3081
    for padding in ("zeros", "circular_mask"):
        raw = GroupViews("c8", padding=padding)(images)
        normalised = GroupViews("c8", padding=padding, background=[-mean / std])((images - mean) / std)
        assert torch.allclose(normalised, (raw - mean) / std, atol=1e-5)


def test_circular_mask_keeps_only_the_inscribed_disk(images):
    mask = disk_mask(28, 28)
    assert torch.equal(mask, torch.rot90(mask, 1)) and torch.equal(mask, mask.flip(-1))
    views = GroupViews("c16", padding="circular_mask")(images)
    assert views[..., mask == 0].abs().max() == 0
    model = make("mean", "c4")
    model.net.views.padding = "circular_mask"
    assert worst_invariance_error(model.eval(), images, "c4") < 1e-5
    with pytest.raises(ValueError, match="padding must be one of"):
        GroupViews("c4", padding="reflection")


def test_spatial_inverse_action_aligns_the_feature_maps():
    group_views = GroupViews("d4")
    maps = torch.rand(2, 3, 4, 4)
    aligned = group_views.inverse_on_maps(group_views(maps))
    assert torch.equal(aligned, maps.unsqueeze(1).expand_as(aligned))


# ---- aggregators ------------------------------------------------------------------------------------------
def test_every_method_declares_itself_and_documents_its_formula():
    for name, cls in CATALOG.items():
        assert cls.level in ("embedding", "logits", "spatial", "input"), name
        assert set(cls.summary) == {"aggregated", "weights", "normalisation", "estimator", "difference"}, name
        assert "=" in cls.__doc__ and "(B, |G|" in cls.__doc__, name
        model = make(name, "c4", regimes_of(name)[0])
        assert model.net.aggregator.learned == any(True for _ in model.net.aggregator.parameters()), name


def test_lambda_weights_are_positive_and_normalised():
    embeddings = torch.randn(4, 8, 6)
    for normalization in ("softmax", "sum"):
        lam = aggregator("lambda", normalization=normalization)(embed_dim=6)
        assert torch.allclose(lam(embeddings), embeddings.mean(1), atol=1e-6)  # untrained = mean
        for p in lam.parameters():
            p.data.normal_(0, 0.5)
        weights = lam.weights(embeddings)
        assert (weights > 0).all() and torch.allclose(weights.sum(1), torch.ones(4))
        assert torch.allclose(lam(embeddings), (weights.unsqueeze(-1) * embeddings).sum(1), atol=1e-6)


def test_spatial_lambda_weighs_the_aligned_maps():
    backbone = functools.partial(timm_backbone, model_name="resnet18")
    model = make("lambda_spatial", "c4", "aggregator_only", backbone=backbone, data=dict(MNIST, image_size=64)).eval()
    assert model.net.aggregator.level == "spatial"
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features, embeddings = model.net.view_features(model.normalize(x))
        weights = model.net.aggregator.weights(embeddings)
        combined = (weights[:, :, None, None, None] * model.net.views.inverse_on_maps(features)).sum(1)
        assert torch.allclose(model(x), model.net.backbone.forward_head(combined), atol=1e-5)
    assert make("lambda_spatial", "c4", "aggregator_only").net.aggregator.level == "embedding"  # a ViT: no maps


@pytest.mark.parametrize("name", ["transformer", "equiattention"])
def test_untrained_attention_aggregators_start_as_the_mean(name):
    embeddings = torch.randn(3, 4, 8)
    module = aggregator(name)(embed_dim=8).eval()
    assert torch.allclose(module(embeddings), embeddings.mean(1), atol=1e-6)


def test_probability_aggregators_follow_their_formulas():
    logits = torch.randn(5, 16, 10) * 3
    probs = logits.softmax(-1)
    assert torch.allclose(aggregator("mean_probs")()(logits).exp(), probs.mean(1), atol=1e-6)
    assert torch.allclose(aggregator("tta")()(logits), logits.mean(1))
    most_probable = aggregator("most_probable", temperature=1.0)()(logits)
    product = probs.double().prod(1)
    assert torch.allclose(most_probable.softmax(-1).double(), product / product.sum(-1, keepdim=True), atol=1e-5)
    per_class = aggregator("most_certain")()(logits)
    assert torch.equal(per_class, logits.gather(1, probs.argmax(1, keepdim=True)).squeeze(1))
    one_view = aggregator("most_certain", per_class=False)()(logits)
    best = probs.amax(-1).argmax(1)
    assert torch.equal(one_view, logits[torch.arange(5), best])


def test_most_probable_temperature_defaults_to_half_the_group_order():
    for group, temperature in [("c4", 2.0), ("d4", 4.0), ("c16", 8.0), ("flip", 1.0)]:
        assert make("most_probable", group).net.aggregator.temperature == temperature
    logits = torch.randn(3, 16, 10)
    default = aggregator("most_probable")(group=get_group("c16"))(logits)
    assert torch.allclose(default, (logits / 8).log_softmax(-1).sum(1))


def test_most_probable_stays_finite_where_the_product_underflows():
    logits = torch.randn(4, 16, 10) * 60  # per-view probabilities ~1e-40: their product is 0 in float32
    assert (logits.softmax(-1).prod(1) == 0).all()
    logits.requires_grad_(True)
    out = aggregator("most_probable", temperature=1.0)()(logits)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()


def test_equizero_picks_the_least_uncertain_view_with_a_straight_through_gradient():
    logits = torch.randn(3, 4, 10)
    logits[:, 2] *= 20  # the most confident view
    logits.requires_grad_(True)
    for proxy in ("entropy", "max_prob"):
        module = aggregator("equizero", proxy=proxy)()
        with torch.no_grad():
            assert torch.equal(module(logits), logits[:, 2])
        out = module(logits)
        assert torch.allclose(out, logits[:, 2], atol=1e-5)
        logits.grad = None
        out.sum().backward()
        assert torch.allclose(logits.grad, torch.full_like(logits, 1 / 4))  # through the mean of the views


# ---- learned canonicalization ---------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["c4", "flip", "d4"])
def test_orientation_logits_permute_as_the_regular_representation(group):
    """o(g x)[g h] = o(x)[h] in the element indexing of gevit.groups, exactly (float64)."""
    from gevit.posthoc import OrientationNet

    g = get_group(group)
    torch.manual_seed(0)
    net = OrientationNet(g, in_channels=1, width=2, depth=2, kernel_size=3).double().eval()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        reference = net(x)
        for u in range(g.order):
            moved = net(g.act_on_images(x, u))
            assert torch.allclose(moved[:, g.cayley_table[u]], reference, atol=1e-6), (group, u)


def test_canonicalization_trains_through_its_estimators_and_the_prior(images):
    for estimator in ("straight_through", "gumbel"):
        model = make("canonicalization", "c4", "aggregator_only", estimator=estimator).train()
        loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 2, 3]))
        loss.backward()
        grads = [p.grad for p in model.net.aggregator.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), estimator
    # the prior alone pushes the orientation of (upright) training images to the identity
    model = make("canonicalization", "c4", "aggregator_only", prior_weight=1.0, width=4, depth=3, kernel_size=5).train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.05)
    upright = images[..., 7:21, 7:21]  # the orientation net takes any size; small is fast
    start = model.net.orientation_logits(upright).softmax(-1)[:, 0].mean().item()
    for _ in range(30):
        optimizer.zero_grad()
        model.net.aggregator.prior_loss(model.net.orientation_logits(upright)).backward()
        optimizer.step()
    model.eval()
    assert model.net.orientation_logits(upright).softmax(-1)[:, 0].mean().item() > max(start, 0.5)
    assert model.canonicalizer_accuracy(upright, seed=0) > 0.5


# ---- backbones -----------------------------------------------------------------------------------------
def test_timm_backbones_with_local_weights_only(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = timm_backbone(
        num_classes=10, in_channels=3, image_size=32, model_name="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    assert isinstance(backbone, TimmStyleBackbone) and backbone.spatial_features and backbone.embed_dim == 512
    assert backbone.invariant_pooling  # global average pooling
    assert torch.equal(backbone.model.conv1.weight, source.conv1.weight)
    assert backbone.head.out_features == 10
    vit = timm_backbone(
        num_classes=10,
        in_channels=1,
        image_size=28,
        model_name="vit_tiny_patch16_224",
        model_kwargs={"img_size": 28, "patch_size": 7, "depth": 1},
    )
    assert not vit.spatial_features and vit.forward_head(
        vit.forward_features(torch.rand(2, 1, 28, 28)), pre_logits=True
    ).shape == (2, 192)
    with pytest.raises(FileNotFoundError, match="timm weights file"):
        timm_backbone(num_classes=10, in_channels=3, image_size=32, model_name="resnet18", weights="/nope.pth")


def test_attention_pooled_timm_clip_resnet_is_recognised_and_made_invariant():
    """timm's resnet50_clip (attention pooling with a positional embedding, CLIP RN50): its pooling is not
    trusted, so spatial methods read out symmetrised; float64, random weights, rot90 and a mirror."""
    backbone = timm_backbone(
        num_classes=10, in_channels=1, image_size=64, model_name="resnet50_clip", model_kwargs={"img_size": 64}
    )
    assert backbone.spatial_features and not backbone.invariant_pooling
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = make("equiattention", "d4", "aggregator_only", backbone=backbone, data=dict(MNIST, image_size=64))
    model = model.double().eval()
    assert model.net.aggregator.level == "spatial" and model.net.symmetrize_pooling
    with torch.no_grad():
        reference = model(x)
        for index in generators("d4"):
            assert relative_error(model(get_group("d4").act_on_images(x, index)), reference) < 1e-12, index


def test_torchvision_resnets_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = resnet_backbone(
        num_classes=2, in_channels=3, image_size=64, arch="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    assert isinstance(backbone, TorchvisionResNetBackbone) and backbone.embed_dim == 512
    assert torch.equal(backbone.model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert backbone.head.out_features == 2
    gray = resnet_backbone(
        num_classes=10, in_channels=1, image_size=64, arch="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    assert torch.allclose(gray.model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    x = torch.rand(2, 3, 64, 64)
    features = backbone.eval().forward_features(x)
    assert features.shape == (2, 512, 2, 2)
    assert torch.allclose(backbone.forward_head(features), backbone.model.eval()(x), atol=1e-5)
    resnet50 = resnet_backbone(num_classes=2, in_channels=3, image_size=96)  # the default arch
    assert resnet50.embed_dim == 2048 and resnet50.forward_features(torch.rand(1, 3, 96, 96)).shape == (1, 2048, 3, 3)
    with pytest.raises(ValueError, match="not a resnet50 state_dict"):
        resnet_backbone(num_classes=2, in_channels=3, image_size=64, weights=str(tmp_path / "resnet18.pth"))


def test_peer_vit_backbone_loads_the_original_checkpoint(shared_data):
    from gevit.models import VisionTransformer, convert_peer_vit_state_dict
    from gevit.posthoc import peer_vit_backbone

    path = shared_data / "checkpoints" / "peer_vit_upright_mnist.pt"
    backbone = peer_vit_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path=str(path)).eval()
    reference = VisionTransformer().eval()
    reference.load_state_dict(convert_peer_vit_state_dict(torch.load(path, map_location="cpu", weights_only=True)))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(backbone(x), reference(x))


def test_a_backbone_with_the_wrong_number_of_classes_is_refused():
    with pytest.raises(ValueError, match="data has 2 classes"):
        check_backbone(TINY_BACKBONE(num_classes=10, in_channels=1, image_size=28), 2, 1, 28)


# ---- two stages through train.py ----------------------------------------------------------------------
SMALL = [
    "data.train_size=128",
    "data.val_size=64",
    "data.test_size=64",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "callbacks.rotation_robustness.max_samples=16",
    "callbacks.rotation_robustness.step_deg=90",
    "logger=csv",
]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """Stage 1: a tiny ViT trained for one epoch on upright digits; returns its selected checkpoint."""
    out = tmp_path_factory.mktemp("stage1")
    cfg = compose_config(
        ["experiment=vit_rotmnist_mini", "data.variant=upright_train", "trainer.max_epochs=1", "seed=0"]
        + TINY_VIT
        + SMALL,
        out,
    )
    metrics, _ = train_script.run(cfg)
    return Path(metrics["best_checkpoint"])


def stage2(tmp_path: Path, *overrides: str):
    cfg = compose_config(
        ["experiment=posthoc_rotmnist_mini", "trainer.max_epochs=1"] + SMALL + list(overrides), tmp_path
    )
    return train_script.run(cfg)


def test_checkpoint_backbone_rebuilds_the_stage1_network(stage1):
    net = network_from_checkpoint(stage1)
    state = torch.load(stage1, map_location="cpu", weights_only=True)["state_dict"]
    assert net.embed_dim == 16 and torch.equal(net.head[1].weight, state["net.head.1.weight"])
    backbone = checkpoint_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path=str(stage1))
    assert backbone.weights_source == str(stage1)
    with pytest.raises(ValueError, match="does not match the configured backbone architecture"):
        vit_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path=str(stage1))
    with pytest.raises(ValueError, match="needs model.backbone.ckpt_path"):
        checkpoint_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path=None)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_option_builds_a_wrapper(name, stage1, tmp_path):
    """Every yaml of conf/model/backbone/ (tiny where it has sizes; the checkpoint one wraps stage 1)."""
    extra = {
        "vit": TINY_BACKBONE_OVERRIDES[1:],
        "checkpoint": [f"model.backbone.ckpt_path={stage1}"],
        "timm": ["model.backbone.model_name=resnet18"],
    }.get(name, [])
    cfg = compose_config(["model=posthoc", f"model/backbone={name}", "model/aggregator=mean"] + extra, tmp_path)
    model = hydra.utils.instantiate(cfg.model).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_two_stage_zero_shot_wraps_the_trained_backbone(stage1, tmp_path):
    metrics, objects = stage2(tmp_path, f"model.backbone.ckpt_path={stage1}", "model.group=c16")
    assert metrics["status"] == "completed"
    assert 0 <= metrics["val/acc_best"] <= 1 and 0 <= metrics["test/acc"] <= 1
    assert metrics["model/params_trainable"] == 0
    assert objects["datamodule"].test_loader_calls == 1
    model = objects["model"]
    stage1_state = torch.load(stage1, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in model.net.backbone.model.state_dict().items():
        assert torch.equal(value, stage1_state[f"net.{key}"]), key
    # the same network described by the vit source (architecture in the config, weights from the file)
    again, _ = stage2(
        tmp_path / "vit", f"model.backbone.ckpt_path={stage1}", "model.group=c16", *TINY_BACKBONE_OVERRIDES
    )
    assert again["test/acc"] == pytest.approx(metrics["test/acc"])


def test_two_stage_mlp_trains_only_the_head(stage1, tmp_path):
    metrics, objects = stage2(
        tmp_path, f"model.backbone.ckpt_path={stage1}", "model.regime=mlp", "model/aggregator=equiattention"
    )
    assert metrics["status"] == "completed" and Path(metrics["best_checkpoint"]).is_file()
    model = objects["model"]
    head = sum(p.numel() for p in model.net.backbone.head.parameters())
    aggregator = sum(p.numel() for p in model.net.aggregator.parameters())
    assert metrics["model/params_trainable"] == head + aggregator
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    stage1_state = torch.load(stage1, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in stage1_state.items():
        wrapped = best["state_dict"][key.replace("net.", "net.backbone.model.", 1)]
        assert torch.equal(wrapped, value) == (".head." not in key), key
    assert best["gevit_model_config"]["aggregator"]["_target_"].endswith("EquiAttentionAggregator")
    # write-up 003's second phase starts from this aggregator and trains the backbone with it frozen
    best_path = Path(metrics["best_checkpoint"])
    run_dir = best_path.parents[1]  # a run directory is accepted: its one checkpoints/best-*.ckpt
    phase2, objects = stage2(
        tmp_path / "phase2",
        f"model.backbone.ckpt_path={stage1}",
        "model.regime=backbone_only",
        "model/aggregator=equiattention",
        f"model.init_aggregator_from={run_dir}",
    )
    trained = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    start = objects["model"].net.aggregator.state_dict()
    after = torch.load(phase2["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    for key, value in start.items():
        assert torch.equal(value, trained[f"net.aggregator.{key}"]) and torch.equal(
            after[f"net.aggregator.{key}"], value
        )
    assert phase2["model/params_trainable"] == phase2["model/params"] - phase2["model/params_aggregator"]
    with pytest.raises(Exception, match="does not match model/aggregator=lambda"):
        stage2(
            tmp_path / "bad",
            f"model.backbone.ckpt_path={stage1}",
            "model.regime=full",
            "model/aggregator=lambda",
            f"model.init_aggregator_from={best_path}",
        )


def test_a_stage2_experiment_without_its_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(Exception, match="model.backbone.ckpt_path"):
        stage2(tmp_path)


def test_command_line_contract(stage1, tmp_path):
    """python train.py model=posthoc model/aggregator=... model.group=... model.regime=... model.backbone..."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "train.py",
        "model=posthoc",
        "model/aggregator=lambda",
        "model.group=flip",
        "model.regime=aggregator_only",
        "model/backbone=checkpoint",
        f"model.backbone.ckpt_path={stage1}",
        "data.variant=upright_train",
        "trainer.max_epochs=1",
        f"hydra.run.dir={out}",
        *SMALL,
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["model/params_trainable"] == metrics["model/params_aggregator"]


@pytest.mark.parametrize("name", AGGREGATORS)
def test_every_aggregator_option_composes_for_every_group(name, tmp_path):
    for group in ("c4", "flip", "d4", "c8", "c16"):
        cfg = compose_config(
            [
                "model=posthoc",
                f"model/aggregator={name}",
                f"model.group={group}",
                f"model.regime={regimes_of(name)[-1]}",
            ]
            + TINY_BACKBONE_OVERRIDES,
            tmp_path,
        )
        model = hydra.utils.instantiate(cfg.model)
        assert isinstance(model, PostHocClassifier) and model.net.group.order == get_group(group).order
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# ---- the folder is the list -------------------------------------------------------------------------------
def test_docs_methods_table_matches_the_folder():
    """docs/posthoc.md's methods table is `python -m lightning_modules.posthoc methods-table`: every row
    it has is the generated row of an existing method (stale or removed methods fail); a method of the
    folder without a row only warns, so that adding a method stays one module + one yaml."""
    import warnings

    from lightning_modules.posthoc import methods_table_rows

    text = (REPO / "docs" / "posthoc.md").read_text()
    table = text.split("<!-- methods-table:start")[1].split("<!-- methods-table:end -->")[0]
    documented = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    generated = methods_table_rows()
    assert set(documented) <= set(generated), f"docs rows without a yaml: {set(documented) - set(generated)}"
    for name, row in documented.items():
        assert row == generated[name], (
            f"the docs row of {name} is stale: regenerate it with python -m lightning_modules.posthoc methods-table"
        )
    if set(generated) - set(documented):
        warnings.warn(
            f"docs/posthoc.md has no row for {sorted(set(generated) - set(documented))}; "
            "python -m lightning_modules.posthoc methods-table prints it"
        )


def test_the_sweeps_read_the_folder(capsys):
    from lightning_modules.posthoc import _main

    _main(["aggregators", "--learned"])
    assert capsys.readouterr().out.strip().split(",") == sorted(LEARNED)
    _main(["aggregators", "--fixed"])
    assert capsys.readouterr().out.strip().split(",") == sorted(set(AGGREGATORS) - LEARNED)
    grid = (REPO / "multirun" / "posthoc_grid.sh").read_text()
    assert "lightning_modules.posthoc aggregators --fixed" in grid and "aggregators --learned" in grid
