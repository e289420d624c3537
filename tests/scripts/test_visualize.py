"""scripts/visualize.py and scripts/figures/: every figure from tiny checkpoints trained here (rebuilt by
runkit.load_run), the CLI end to end, clear refusals of checkpoints of the wrong kind, and the equivariance
that the latent figure shows. The maths alone is tested on untrained networks in tests/gevit/test_analysis.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train as train_script
from gevit.posthoc.aggregators.mean import MeanAggregator
from runkit import CheckpointError, load_run
from scripts.figures import (
    CheckpointKindError,
    LoadedModel,
    gevit_attention,
    gevit_latents,
    load_model,
    plot_gevit_attention,
    plot_gevit_latents,
    plot_robustness_comparison,
    plot_rotation_confidence,
    plot_view_weights,
    plot_vit_attention,
    rotation_predictions,
    validation_digits,
    view_weight_statistics,
    write_rotation_gif,
)
from scripts.visualize import main
from tests.support.compose import TINY_VIT, compose_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]

# A few dozen digits and the smallest models: each training run takes a few seconds on 2 cores.
SMALL = [
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=32",
    "data.eval_batch_size=32",
    "callbacks.rotation_robustness.max_samples=16",
    "callbacks.rotation_robustness.step_deg=90",
    "logger=csv",
    "trainer.max_epochs=1",
    "seed=0",
]
TINY_GEVIT = ["model=gevit"] + tiny_overrides("gevit") + ["model.net.spatial_pooling=mean"]


def train_tiny(out: Path, overrides: list[str]) -> Path:
    """Train one tiny model with train.py's run(); returns its run directory."""
    metrics, _ = train_script.run(compose_config(SMALL + overrides, out))
    assert metrics["status"] == "completed"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories of a tiny ViT (upright digits), a tiny GE-ViT p4, and post-hoc λ-equitune and
    EquiAttention wrappers of that ViT over c4 (aggregator trained for one epoch)."""
    tmp = tmp_path_factory.mktemp("viz_runs")
    vit = train_tiny(tmp / "vit", ["model=vit"] + TINY_VIT + ["data.variant=upright_train"])
    backbone = next((vit / "checkpoints").glob("best-*.ckpt"))
    posthoc = [
        "experiment=posthoc_rotmnist_mini",
        f"model.backbone.ckpt_path={backbone}",
        "model.regime=aggregator_only",
        "model.group=p4",
    ]
    return {
        "vit": vit,
        "gevit": train_tiny(tmp / "gevit", TINY_GEVIT),
        "lambda": train_tiny(tmp / "lambda", posthoc + ["model/aggregator=lambda", "model.aggregator.hidden_dim=16"]),
        "equiattention": train_tiny(
            tmp / "equiattention",
            posthoc
            + ["model/aggregator=equiattention", "model.aggregator.hidden_dim=16", "model.aggregator.attn_dim=16"],
        ),
    }


def last_ckpt(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def models(runs) -> dict[str, LoadedModel]:
    return {name: load_model(last_ckpt(run)) for name, run in runs.items()}


@pytest.fixture(scope="module")
def digit():
    images, labels = validation_digits(3, 1)
    return images, int(labels[0])


def assert_real_png(path: Path, min_side: int = 200) -> None:
    """A PNG of a reasonable size that is not one flat colour."""
    assert path.is_file() and path.suffix == ".png"
    with Image.open(path) as image:
        assert min(image.size) >= min_side, image.size
        assert np.asarray(image.convert("L"), dtype=float).std() > 0


# ---- loading ----------------------------------------------------------------------------------------------
def test_checkpoints_rebuild_the_trained_modules(models, runs):
    assert {name: m.kind for name, m in models.items()} == {
        "vit": "vit",
        "gevit": "gevit",
        "lambda": "posthoc",
        "equiattention": "posthoc",
    }
    assert models["gevit"].label == "GE-ViT" and models["lambda"].label == "post-hoc lambda"
    assert "GE-ViT p4" in models["gevit"].description()
    assert all(not m.module.training for m in models.values())
    # a Lightning checkpoint of train.py loads with the safe unpickler, and the weights are the trained ones
    state = torch.load(last_ckpt(runs["gevit"]), map_location="cpu", weights_only=True)["state_dict"]
    for key, value in models["gevit"].module.state_dict().items():
        assert torch.equal(value, state[key]), key
    module, config, path = load_run(last_ckpt(runs["vit"]))
    assert config == models["vit"].config and "_target_" in config and path == last_ckpt(runs["vit"])


def _with_backbone_file(ckpt: dict, gone: str) -> dict:
    """A copy of a post-hoc checkpoint dict whose backbone was trained from the file ``gone``."""
    ckpt = copy.deepcopy(ckpt)
    config = ckpt["gevit_model_config"]
    config["backbone"] = {**config["backbone"], "ckpt_path": gone}
    return ckpt


def test_a_post_hoc_checkpoint_loads_without_its_stage1_file(runs, tmp_path):
    """The stored state_dict holds the backbone: a backbone whose architecture is in the config needs no file;
    one that takes its architecture from the stage-1 file (the experiment's 'checkpoint' backbone) names it."""
    ckpt = torch.load(last_ckpt(runs["lambda"]), map_location="cpu", weights_only=True)
    gone, moved = str(tmp_path / "gone.ckpt"), tmp_path / "moved.ckpt"
    # the stage-1 file exists: it is read for the architecture, its weights replaced by the state_dict
    images, _ = validation_digits(0, 4)
    original = load_model(last_ckpt(runs["lambda"]))
    torch.save(_with_backbone_file(ckpt, gone), moved)
    with pytest.raises(FileNotFoundError, match=r"gone\.ckpt, which does not exist any more"):
        load_model(moved)
    # the same wrapper with the architecture spelled out in the config (this project's ViT) needs no file
    vit_config = load_model(last_ckpt(runs["vit"])).config["net"]
    architecture = {
        k: v
        for k, v in vit_config.items()
        if k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_hidden_dim", "dropout")
    }
    self_described = _with_backbone_file(ckpt, gone)
    backbone = self_described["gevit_model_config"]["backbone"]
    if "source" in backbone:
        self_described["gevit_model_config"]["backbone"] = {"source": "vit", "ckpt_path": gone, **architecture}
    else:  # backbones configured by _target_
        self_described["gevit_model_config"]["backbone"] = {
            **{k: v for k, v in backbone.items() if k.startswith("_")},
            "_target_": "gevit.posthoc.backbones.vit_backbone",
            "ckpt_path": gone,
            **architecture,
        }
    torch.save(self_described, moved)
    with torch.no_grad():
        assert torch.allclose(load_model(moved).module(images), original.module(images), atol=1e-6)


def test_files_that_are_not_rebuildable_checkpoints_get_one_clear_error(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        load_run(tmp_path / "missing.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.ckpt"):
        load_run(tmp_path / "corrupt.ckpt")
    bare = torch.load(last_ckpt(runs["vit"]), map_location="cpu", weights_only=True)
    del bare["gevit_model_config"]
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="stores no model config"):
        load_run(tmp_path / "bare.ckpt")


# ---- figures --------------------------------------------------------------------------------------------
def test_rotation_gif_has_one_frame_per_angle(models, digit, tmp_path):
    image, label = digit
    chosen = [models["vit"], models["gevit"]]
    angles = [0.0, 45.0, 90.0, 135.0, 180.0, 270.0]
    probabilities = rotation_predictions(chosen, image, angles)
    gif = write_rotation_gif(chosen, image, label, angles, tmp_path / "rotation.gif", probabilities)
    with Image.open(gif) as animation:
        assert animation.n_frames == len(angles)
        assert min(animation.size) >= 300
    # the exactly invariant GE-ViT predicts the same at every multiple of 90 degrees
    quarter = probabilities["GE-ViT"][[0, 2, 4, 5]]
    assert torch.allclose(quarter, quarter[:1].expand_as(quarter), atol=1e-5)
    assert_real_png(plot_rotation_confidence(chosen, probabilities, label, angles, tmp_path / "confidence.png"))


def test_latents_of_rotated_inputs_are_rotated_and_rolled_latents(models, digit, tmp_path):
    image, label = digit
    path, errors = plot_gevit_latents(models["gevit"], image, label, tmp_path / "latents.png")
    assert_real_png(path)
    num_layers = 1 + 2  # lifting + the two blocks of the tiny GE-ViT
    assert errors.shape == (num_layers, 4) and float(errors.max()) < 1e-4
    deviation, _ = plot_gevit_latents(
        models["gevit"], image, label, tmp_path / "deviation.png", channels=[0], subtract_group_mean=True
    )
    assert_real_png(deviation)
    # in float64 the equivariance is exact up to rounding
    exact = copy.deepcopy(models["gevit"])
    exact.module = exact.module.double()
    features, errors64 = gevit_latents(exact, image.double())
    assert features[0].dtype == torch.float64 and float(errors64.max()) < 1e-10
    # and it is not trivially zero: the maps of a quarter-turned input really differ from the upright ones
    assert float((features[0][1] - features[0][0]).abs().max()) > 1e-3


def test_gevit_attention_received_rotates_with_the_input(models, digit, tmp_path):
    image, label = digit
    layers = gevit_attention(models["gevit"], torch.cat([image, torch.rot90(image, 1, dims=(-2, -1))]))
    for layer in layers:
        received = layer["received"]
        assert torch.allclose(received.sum(dim=(-2, -1)), torch.ones(2), atol=1e-5)
        assert torch.allclose(received[1], torch.rot90(received[0], 1, dims=(-2, -1)), atol=1e-5)
        assert torch.allclose(layer["centre"].sum(dim=(-2, -1)), torch.ones(1, 4), atol=1e-5)
    assert_real_png(plot_gevit_attention(models["gevit"], image, label, tmp_path / "gevit_attention.png"))
    assert_real_png(plot_vit_attention(models["vit"], image, label, tmp_path / "vit_attention.png"))


@pytest.mark.parametrize("name", ["lambda", "equiattention"])
def test_view_weights_statistics_and_figure(models, name, tmp_path):
    images, labels = validation_digits(0, 24)
    png, json_path, stats = plot_view_weights(models[name], images, labels, tmp_path / f"{name}.png")
    assert_real_png(png)
    on_disk = json.loads(json_path.read_text())
    assert on_disk["aggregator"] == name and on_disk["num_images"] == 24 and len(on_disk["per_image"]) == 24
    for row in on_disk["per_image"]:
        assert len(row["weights"]) == 4 and sum(row["weights"]) == pytest.approx(1.0, abs=1e-6)
        assert row["pre_rotation_deg"] in (0, 90, 180, 270)
        assert row["upright_view"] == (-row["pre_rotation_deg"] // 90) % 4
    for key in ("win_fraction", "relative_win_fraction"):
        assert all(0 <= f <= 1 for f in on_disk[key]) and sum(on_disk[key]) == pytest.approx(1.0)
    for key in ("mean_weight", "relative_mean_weight"):
        assert sum(on_disk[key]) == pytest.approx(1.0)
    assert 0 <= on_disk["upright_win_fraction"] <= 1 and 0 <= on_disk["accuracy"] <= 1
    # relative to the upright digit, the upright view is element 0
    assert on_disk["relative_win_fraction"][0] == pytest.approx(on_disk["upright_win_fraction"])
    assert stats["relative_mean_weight"][0] == pytest.approx(stats["upright_mean_weight"])
    upright = view_weight_statistics(models[name], images, labels, pre_rotate=False)
    assert upright["win_fraction"] == upright["relative_win_fraction"]


def test_robustness_comparison_reads_every_run(runs, tmp_path):
    path, curves = plot_robustness_comparison([runs["vit"], runs["gevit"]], tmp_path / "robustness.png")
    assert_real_png(path)
    labels = list(curves)
    assert labels[0].startswith("vit: ViT") and labels[1].startswith("gevit: GE-ViT p4, 3x3 local attention")
    assert all(c["angles"] == [0, 90, 180, 270] for c in curves.values())
    # the CSV alone is enough, and an explicit label wins
    csv_only = tmp_path / "csv_only"
    csv_only.mkdir()
    (csv_only / "rotation_robustness.csv").write_text((runs["vit"] / "rotation_robustness.csv").read_text())
    _, again = plot_robustness_comparison({"mine": csv_only}, tmp_path / "again.png")
    assert list(again) == ["mine (n=16)"] and again["mine (n=16)"]["accuracy"] == curves[labels[0]]["accuracy"]


# ---- refusals ---------------------------------------------------------------------------------------------
def test_checkpoints_of_the_wrong_kind_are_refused_by_name(models, runs, digit, tmp_path, capsys):
    image, label = digit
    with pytest.raises(CheckpointKindError, match=r"latents: .*last\.ckpt holds a ViT.*expected a GE-ViT"):
        gevit_latents(models["vit"], image)
    with pytest.raises(CheckpointKindError, match="expected a ViT"):
        plot_vit_attention(models["gevit"], image, label, tmp_path / "x.png")
    module = copy.deepcopy(models["lambda"].module)
    module.net.aggregator = MeanAggregator()
    mean = LoadedModel("mean", Path("runs/mean/checkpoints/last.ckpt"), module, models["lambda"].config)
    images, labels = validation_digits(0, 2)
    with pytest.raises(CheckpointKindError, match=r"runs/mean/checkpoints/last\.ckpt aggregates with 'mean'"):
        view_weight_statistics(mean, images, labels)
    # the command line prints one message naming the file and exits with status 2
    assert main(["latents", "--gevit-ckpt", str(last_ckpt(runs["vit"])), "--out", str(tmp_path / "cli")]) == 2
    message = capsys.readouterr().err
    assert str(last_ckpt(runs["vit"])) in message and "expected a GE-ViT" in message
    assert main(["view-weights", "--posthoc-ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path)]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err


# ---- command line -----------------------------------------------------------------------------------------
def test_cli_all_writes_every_figure(runs, tmp_path):
    out = tmp_path / "figures"
    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    cmd = [
        sys.executable,
        "-m",
        "scripts.visualize",
        "all",
        "--vit-ckpt",
        str(last_ckpt(runs["vit"])),
        "--gevit-ckpt",
        str(last_ckpt(runs["gevit"])),
        "--posthoc-ckpt",
        str(last_ckpt(runs["lambda"])),
        "--angle-step",
        "60",
        "--num-images",
        "8",
        "--image-index",
        "1",
        "--out",
        str(out),
        "--wandb",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (
        "rotation_confidence",
        "gevit_latents",
        "gevit_latents_group_deviation",
        "gevit_attention",
        "vit_attention",
        "view_weights_post_hoc_lambda",
        "rotation_robustness_comparison",
    ):
        assert_real_png(out / f"{name}.png")
    with Image.open(out / "rotation.gif") as animation:
        assert animation.n_frames == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latents"]["max_equivariance_error"] < 1e-4
    assert set(summary["rotation"]) == {"ViT", "GE-ViT", "post-hoc lambda"}
    # without --runs, 'all' compares the runs the checkpoints came from
    assert len(summary["robustness"]) == 3
    assert 0 <= summary["view_weights"]["post-hoc lambda"]["upright_win_fraction"] <= 1
