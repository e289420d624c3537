"""The post-hoc LightningModule (:class:`lightning_modules.PostHocClassifier`): invariance of every method of
conf/model/aggregator/ x group x regime (also on backbones whose pooling depends on position), one batched
backbone call, and what each regime trains and freezes."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from gevit.groups import get_group
from gevit.posthoc import (
    PostHocInvariant,
    adapt,
    timm_backbone,
)
from gevit.posthoc.backbones import TorchvisionResNetBackbone
from tests.support.compose import compose_config
from tests.support.posthoc import (
    AGGREGATORS,
    EXACT_GROUPS,
    MNIST,
    TINY_BACKBONE,
    PooledCNN,
    aggregator,
    generators,
    make,
    regimes_of,
    relative_error,
    worst_invariance_error,
)


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
    model = PostHocInvariant(backbone, "p4", aggregator("equiattention"), spatial_pooling="backbone").double().eval()
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
    model = PostHocInvariant(backbone, "p4m", aggregator("equiattention")).eval()
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
