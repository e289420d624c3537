"""Post-hoc invariant wrappers: invariance of every aggregator x group x regime, one batched backbone call,
regimes, aggregator formulas, backbone sources, and the two-stage pipeline through train.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import timm
import torch
import torchvision

import train as train_script
from gevit.groups import get_group
from gevit.posthoc import (GroupViews, PostHocInvariant, adapt, build_aggregator, build_backbone, disk_mask,
                           instantiate_config, list_aggregators, network_from_checkpoint)
from gevit.posthoc.backbones import TimmStyleBackbone, TorchvisionResNetBackbone
from lightning_modules import PostHocClassifier
from tests.helpers import TINY_VIT, compose_config

REPO = Path(__file__).resolve().parents[1]
AGGREGATORS = ["mean", "max", "sum", "lambda", "transformer", "equiattention",
               "mean_probs", "most_probable", "most_certain", "equizero"]
LEARNED = {"lambda", "transformer", "equiattention"}
EXACT_GROUPS = ["c4", "flip", "d4"]
MNIST = dict(num_classes=10, in_channels=1, image_size=28, input_mean=(0.1307,), input_std=(0.3081,))
# A deliberately non-invariant random backbone, without dropout so that training-mode forwards are
# deterministic.
TINY_BACKBONE = {"source": "vit", "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_hidden_dim": 32,
                 "dropout": 0.0}
TINY_BACKBONE_OVERRIDES = ["model/backbone=vit"] + [o.replace("model.net.", "model.backbone.") for o in TINY_VIT]
# No dropout in the learned aggregators either (same reason); small widths keep the tests fast.
AGGREGATOR_OPTIONS = {"lambda": {"hidden_dim": 8}, "equiattention": {"hidden_dim": 8, "attn_dim": 8},
                      "transformer": {"depth": 1, "num_heads": 2, "mlp_hidden_dim": 16, "dropout": 0.0}}


def regimes_of(aggregator: str) -> list[str]:
    return ["aggregator_only", "mlp", "full"] if aggregator in LEARNED else ["zero_shot", "mlp", "full"]


def make(aggregator: str = "mean", group: str = "c4", regime: str = "zero_shot", backbone=None, data=MNIST,
         **aggregator_options) -> PostHocClassifier:
    options = {**AGGREGATOR_OPTIONS.get(aggregator, {}), **aggregator_options}
    model = PostHocClassifier(backbone=dict(backbone or TINY_BACKBONE), aggregator={"name": aggregator, **options},
                              group=group, regime=regime, **data)
    with torch.no_grad():  # move learned aggregators away from their mean-like initialisation
        for p in model.net.aggregator.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def worst_invariance_error(model, images: torch.Tensor, group_name: str) -> float:
    group = get_group(group_name)
    with torch.no_grad():
        reference = model(images)
        return max(relative_error(model(group.act_on_images(images, i)), reference) for i in range(1, group.order))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))


# ---- invariance ---------------------------------------------------------------------------------------
def test_the_random_backbone_is_not_invariant(images):
    backbone = make().net.backbone.eval()
    assert worst_invariance_error(backbone, images, "d4") > 1e-2


@pytest.mark.parametrize("group", EXACT_GROUPS)
@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_logits_are_invariant_for_exact_groups_in_every_regime(aggregator, group, images):
    for regime in regimes_of(aggregator):
        model = make(aggregator, group, regime)
        for mode in (True, False):  # the training-mode forward of this regime, and eval
            model.train(mode)
            error = worst_invariance_error(model, images, group)
            assert error < 1e-5, (aggregator, group, regime, mode, error)


def generators(group_name: str) -> list[int]:
    """Indices of generators of the group: invariance under them is invariance under the whole group."""
    group = get_group(group_name)
    return [group.index((1, 0))] * (group.num_rotations > 1) + [group.index((0, 1))] * group.mirror


@pytest.mark.parametrize("group", EXACT_GROUPS)
def test_spatial_equiattention_is_invariant_on_cnn_feature_maps(group):
    """Values are the last feature maps with g^-1 applied (2x2 maps from 64x64 inputs): exact for
    C4 / flip / D4, also in training mode, where BatchNorm normalises over all B·|G| views."""
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    model = make("equiattention", group, "full", backbone={"source": "timm", "name": "resnet18"},
                 data=dict(MNIST, image_size=64), features="spatial")
    assert model.net.aggregator.level == "spatial" and model.net.backbone.spatial_features
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            reference = model(x)
            for index in generators(group):
                error = relative_error(model(get_group(group).act_on_images(x, index)), reference)
                assert error < 1e-5, (mode, index, error)


def test_torchvision_resnet_adapter_gives_spatial_maps_for_equiattention():
    backbone = adapt(torchvision.models.resnet18(num_classes=10), in_channels=3, image_size=64)
    assert isinstance(backbone, TorchvisionResNetBackbone) and backbone.spatial_features
    aggregator = build_aggregator("equiattention", backbone.embed_dim, backbone.spatial_features)
    for p in aggregator.parameters():
        p.data.normal_(0, 0.5)
    model = PostHocInvariant(backbone, "d4", aggregator).eval()
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
        for aggregator in ["plain backbone"] + AGGREGATORS:
            torch.manual_seed(0)  # the same random backbone for every aggregator
            model = make("mean" if aggregator == "plain backbone" else aggregator, group,
                         regimes_of(aggregator)[0]).eval()
            if aggregator == "plain backbone":
                model = model.net.backbone
            with torch.no_grad():
                error = relative_error(model(rotated), model(images))
            assert error == error  # finite, not NaN
            rows.append(f"{group} {aggregator}: {error:.2e}")
    with capsys.disabled():
        print("\ninvariance error under rotation by 360/n degrees (bilinear), random ViT, random images:\n  "
              + "\n  ".join(rows))


# ---- one batched backbone call ------------------------------------------------------------------------
@pytest.mark.parametrize("aggregator, source", [("mean", "vit"), ("most_probable", "vit"),
                                                ("equiattention", "timm")])
def test_the_views_go_through_the_backbone_in_one_call(aggregator, source):
    first_layer = {"vit": lambda m: m.net.backbone.model.patch_embed, "timm": lambda m: m.net.backbone.model.conv1}
    backbone = TINY_BACKBONE if source == "vit" else {"source": "timm", "name": "resnet18"}
    data = MNIST if source == "vit" else dict(MNIST, image_size=64)
    model = make(aggregator, "d4", regimes_of(aggregator)[0], backbone=backbone, data=data).eval()
    batches = []
    handle = first_layer[source](model).register_forward_hook(
        lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    with torch.no_grad():
        logits = model(torch.rand(5, 1, data["image_size"], data["image_size"]))
    handle.remove()
    assert logits.shape == (5, 10)
    assert batches == [5 * 8]


# ---- regimes ------------------------------------------------------------------------------------------
def test_regimes_freeze_the_right_parts_and_keep_them_in_eval_mode():
    for regime, aggregator in [("zero_shot", "mean"), ("aggregator_only", "lambda"), ("mlp", "lambda"),
                               ("full", "mean")]:
        model = make(aggregator, "c4", regime).train()
        net = model.net
        trainable = {id(p) for p in model.trainable_parameters()}
        assert trainable == {id(p) for p in model.parameters() if p.requires_grad}, regime
        head, agg = set(map(id, net.backbone.head.parameters())), set(map(id, net.aggregator.parameters()))
        expected = {"zero_shot": set(), "aggregator_only": agg, "mlp": head | agg,
                    "full": {id(p) for p in model.parameters()}}[regime]
        assert trainable == expected, regime
        assert net.backbone.model.blocks[0].training == (regime == "full")
        assert net.backbone.head.training == (regime in ("mlp", "full"))
        assert net.aggregator.training == (regime != "zero_shot")
        counts = model.parameter_counts()
        assert counts["model/params_trainable"] == sum(p.numel() for p in model.trainable_parameters())
        assert (counts["model/params_backbone"] + counts["model/params_head"] + counts["model/params_aggregator"]
                == counts["model/params"])
        model.eval()
        assert not any(m.training for m in model.modules())


def test_regime_refusals_are_clear():
    with pytest.raises(ValueError, match="regime=aggregator_only"):
        make("lambda", regime="zero_shot")
    with pytest.raises(ValueError, match="has no parameters: use model.regime=zero_shot"):
        make("mean", regime="aggregator_only")
    with pytest.raises(ValueError, match="unknown regime 'linear'"):
        make("mean", regime="linear")
    with pytest.raises(ValueError, match="unknown aggregator 'median'.*equizero"):
        make("median")


def test_training_the_head_leaves_the_frozen_backbone_untouched(images):
    model = make("mean", "c4", "mlp").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 2, 3])).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".head." in k for k in changed)


def test_state_dict_round_trip_and_dtype_moves(images):
    model = make("equiattention", "d4", "mlp").eval()
    again = make("equiattention", "d4", "mlp").eval()
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
    expected = [torch.rot90(images, k, (-2, -1)) for k in range(4)] + [torch.rot90(images.flip(-1), k, (-2, -1))
                                                                       for k in range(4)]
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
def test_every_aggregator_is_registered_and_documents_its_formula():
    assert sorted(AGGREGATORS) == list_aggregators()
    for name in AGGREGATORS:
        aggregator = build_aggregator(name, embed_dim=8)
        assert "=" in type(aggregator).__doc__ and "(B, |G|" in type(aggregator).__doc__, name


def test_lambda_weights_are_positive_and_normalised():
    embeddings = torch.randn(4, 8, 6)
    for normalization in ("softmax", "sum"):
        aggregator = build_aggregator("lambda", embed_dim=6, normalization=normalization)
        assert torch.allclose(aggregator(embeddings), embeddings.mean(1), atol=1e-6)  # untrained = mean
        for p in aggregator.parameters():
            p.data.normal_(0, 0.5)
        weights = aggregator.weights(embeddings)
        assert (weights > 0).all() and torch.allclose(weights.sum(1), torch.ones(4))
        assert torch.allclose(aggregator(embeddings), (weights.unsqueeze(-1) * embeddings).sum(1), atol=1e-6)


@pytest.mark.parametrize("name", ["transformer", "equiattention"])
def test_untrained_attention_aggregators_start_as_the_mean(name):
    embeddings = torch.randn(3, 4, 8)
    aggregator = build_aggregator(name, embed_dim=8, **AGGREGATOR_OPTIONS[name]).eval()
    assert torch.allclose(aggregator(embeddings), embeddings.mean(1), atol=1e-6)


def test_probability_aggregators_follow_their_formulas():
    logits = torch.randn(5, 16, 10) * 3
    probs = logits.softmax(-1)
    mean_probs = build_aggregator("mean_probs", embed_dim=1)(logits)
    assert torch.allclose(mean_probs.exp(), probs.mean(1), atol=1e-6)
    most_probable = build_aggregator("most_probable", embed_dim=1)(logits)
    product = probs.double().prod(1)
    assert torch.allclose(most_probable.softmax(-1).double(), product / product.sum(-1, keepdim=True), atol=1e-5)
    per_class = build_aggregator("most_certain", embed_dim=1)(logits)
    assert torch.equal(per_class, logits.gather(1, probs.argmax(1, keepdim=True)).squeeze(1))
    one_view = build_aggregator("most_certain", embed_dim=1, per_class=False)(logits)
    best = probs.amax(-1).argmax(1)
    assert torch.equal(one_view, logits[torch.arange(5), best])


def test_most_probable_stays_finite_where_the_product_underflows():
    logits = torch.randn(4, 16, 10) * 60  # per-view probabilities ~1e-40: their product is 0 in float32
    assert (logits.softmax(-1).prod(1) == 0).all()
    logits.requires_grad_(True)
    out = build_aggregator("most_probable", embed_dim=1)(logits)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()


def test_equizero_picks_the_least_uncertain_view_with_a_straight_through_gradient():
    logits = torch.randn(3, 4, 10)
    logits[:, 2] *= 20  # the most confident view
    logits.requires_grad_(True)
    for proxy in ("entropy", "max_prob"):
        aggregator = build_aggregator("equizero", embed_dim=1, proxy=proxy)
        with torch.no_grad():
            assert torch.equal(aggregator(logits), logits[:, 2])
        out = aggregator(logits)
        assert torch.allclose(out, logits[:, 2], atol=1e-5)
        logits.grad = None
        out.sum().backward()
        assert torch.allclose(logits.grad, torch.full_like(logits, 1 / 4))  # through the mean of the views


# ---- backbones -----------------------------------------------------------------------------------------
def test_timm_backbones_with_local_weights_only(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = build_backbone("timm", num_classes=10, in_channels=3, image_size=32, name="resnet18",
                              weights=str(tmp_path / "resnet18.pth"))
    assert isinstance(backbone, TimmStyleBackbone) and backbone.spatial_features and backbone.embed_dim == 512
    assert torch.equal(backbone.model.conv1.weight, source.conv1.weight)
    assert backbone.head.out_features == 10
    vit = build_backbone("timm", num_classes=10, in_channels=1, image_size=28, name="vit_tiny_patch16_224",
                         model_kwargs={"img_size": 28, "patch_size": 7, "depth": 1})
    assert not vit.spatial_features and vit.forward_head(vit.forward_features(torch.rand(2, 1, 28, 28)),
                                                         pre_logits=True).shape == (2, 192)
    with pytest.raises(FileNotFoundError, match="timm weights file"):
        build_backbone("timm", num_classes=10, in_channels=3, image_size=32, name="resnet18", weights="/nope.pth")


def test_torchvision_resnets_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = build_backbone("resnet", num_classes=2, in_channels=3, image_size=64, arch="resnet18",
                              weights=str(tmp_path / "resnet18.pth"))
    assert isinstance(backbone, TorchvisionResNetBackbone) and backbone.embed_dim == 512
    assert torch.equal(backbone.model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert backbone.head.out_features == 2
    gray = build_backbone("resnet", num_classes=10, in_channels=1, image_size=64, arch="resnet18",
                          weights=str(tmp_path / "resnet18.pth"))
    assert torch.allclose(gray.model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    x = torch.rand(2, 3, 64, 64)
    features = backbone.eval().forward_features(x)
    assert features.shape == (2, 512, 2, 2)
    assert torch.allclose(backbone.forward_head(features), backbone.model.eval()(x), atol=1e-5)
    resnet50 = build_backbone("resnet", num_classes=2, in_channels=3, image_size=96)  # the default arch
    assert resnet50.embed_dim == 2048 and resnet50.forward_features(torch.rand(1, 3, 96, 96)).shape == (1, 2048, 3, 3)
    with pytest.raises(ValueError, match="not a resnet50 state_dict"):
        build_backbone("resnet", num_classes=2, in_channels=3, image_size=64, weights=str(tmp_path / "resnet18.pth"))


def test_peer_vit_backbone_loads_the_original_checkpoint(shared_data):
    from gevit.models import VisionTransformer, convert_peer_vit_state_dict

    path = shared_data / "checkpoints" / "peer_vit_upright_mnist.pt"
    backbone = build_backbone("peer_vit", num_classes=10, in_channels=1, image_size=28, ckpt_path=str(path)).eval()
    reference = VisionTransformer().eval()
    reference.load_state_dict(convert_peer_vit_state_dict(torch.load(path, map_location="cpu")))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(backbone(x), reference(x))


def test_instantiate_config_builds_nested_targets_without_hydra():
    backbone = instantiate_config({
        "_target_": "gevit.posthoc.backbones.adapt", "_convert_": "all", "in_channels": 1, "image_size": 28,
        "model": {"_target_": "gevit.models.VisionTransformer", "embed_dim": 16, "depth": 1, "num_heads": 2,
                  "mlp_hidden_dim": 32},
    })
    assert isinstance(backbone, TimmStyleBackbone) and backbone.embed_dim == 16 and len(backbone.model.blocks) == 1
    with pytest.raises(ImportError, match="gevit.models.Nope"):
        instantiate_config({"_target_": "gevit.models.Nope"})


# ---- two stages through train.py ----------------------------------------------------------------------
SMALL = ["data.train_size=128", "data.val_size=64", "data.test_size=64", "data.batch_size=32",
         "data.eval_batch_size=64", "callbacks.rotation_robustness.max_samples=16",
         "callbacks.rotation_robustness.step_deg=90", "logger=csv"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """Stage 1: a tiny ViT trained for one epoch on upright digits; returns its selected checkpoint."""
    out = tmp_path_factory.mktemp("stage1")
    cfg = compose_config(["experiment=vit_rotmnist_mini", "data.variant=upright_train", "trainer.max_epochs=1",
                          "seed=0"] + TINY_VIT + SMALL, out)
    metrics, _ = train_script.run(cfg)
    return Path(metrics["best_checkpoint"])


def stage2(tmp_path: Path, *overrides: str):
    cfg = compose_config(["experiment=posthoc_rotmnist_mini", "trainer.max_epochs=1"] + SMALL + list(overrides),
                         tmp_path)
    return train_script.run(cfg)


def test_checkpoint_backbone_rebuilds_the_stage1_network(stage1):
    net = network_from_checkpoint(stage1)
    state = torch.load(stage1, map_location="cpu", weights_only=False)["state_dict"]
    assert net.embed_dim == 16 and torch.equal(net.head[1].weight, state["net.head.1.weight"])
    backbone = build_backbone("checkpoint", num_classes=10, in_channels=1, image_size=28, ckpt_path=str(stage1))
    assert backbone.weights_source == str(stage1)
    with pytest.raises(ValueError, match="does not match the configured backbone architecture"):
        build_backbone("vit", num_classes=10, in_channels=1, image_size=28, ckpt_path=str(stage1))
    with pytest.raises(ValueError, match="data has 2 classes"):
        build_backbone("checkpoint", num_classes=2, in_channels=1, image_size=28, ckpt_path=str(stage1))


def test_two_stage_zero_shot_wraps_the_trained_backbone(stage1, tmp_path):
    metrics, objects = stage2(tmp_path, f"model.backbone.ckpt_path={stage1}", "model.group=c16")
    assert metrics["status"] == "completed"
    assert 0 <= metrics["val/acc_best"] <= 1 and 0 <= metrics["test/acc"] <= 1
    assert metrics["model/params_trainable"] == 0
    assert objects["datamodule"].test_loader_calls == 1
    model = objects["model"]
    stage1_state = torch.load(stage1, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in model.net.backbone.model.state_dict().items():
        assert torch.equal(value, stage1_state[f"net.{key}"]), key
    # the same network described by the vit source (architecture in the config, weights from the file)
    again, _ = stage2(tmp_path / "vit", f"model.backbone.ckpt_path={stage1}", "model.group=c16",
                                *TINY_BACKBONE_OVERRIDES)
    assert again["test/acc"] == pytest.approx(metrics["test/acc"])


def test_two_stage_mlp_trains_only_the_head(stage1, tmp_path):
    metrics, objects = stage2(tmp_path, f"model.backbone.ckpt_path={stage1}", "model.regime=mlp",
                              "model/aggregator=equiattention")
    assert metrics["status"] == "completed" and Path(metrics["best_checkpoint"]).is_file()
    model = objects["model"]
    head = sum(p.numel() for p in model.net.backbone.head.parameters())
    aggregator = sum(p.numel() for p in model.net.aggregator.parameters())
    assert metrics["model/params_trainable"] == head + aggregator
    best = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    stage1_state = torch.load(stage1, map_location="cpu", weights_only=False)["state_dict"]
    for key, value in stage1_state.items():
        wrapped = best["state_dict"][key.replace("net.", "net.backbone.model.", 1)]
        assert torch.equal(wrapped, value) == (".head." not in key), key
    assert best["gevit_model_config"]["aggregator"]["name"] == "equiattention"


def test_a_stage2_experiment_without_its_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(Exception, match="model.backbone.ckpt_path"):
        stage2(tmp_path)


def test_command_line_contract(stage1, tmp_path):
    """python train.py model=posthoc model/aggregator=... model.group=... model.regime=... model.backbone..."""
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "cli"
    cmd = [sys.executable, "train.py", "model=posthoc", "model/aggregator=lambda", "model.group=flip",
           "model.regime=aggregator_only", "model/backbone=checkpoint", f"model.backbone.ckpt_path={stage1}",
           "data.variant=upright_train", "trainer.max_epochs=1", f"hydra.run.dir={out}", *SMALL]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["model/params_trainable"] == metrics["model/params_aggregator"]


@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_every_aggregator_option_composes_for_every_group(aggregator, tmp_path):
    for group in ("c4", "flip", "d4", "c8", "c16"):
        cfg = compose_config(["model=posthoc", f"model/aggregator={aggregator}", f"model.group={group}",
                              f"model.regime={regimes_of(aggregator)[-1]}"] + TINY_BACKBONE_OVERRIDES, tmp_path)
        model = hydra.utils.instantiate(cfg.model)
        assert isinstance(model, PostHocClassifier) and model.net.group.order == get_group(group).order
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
