"""Post-hoc runs through train.py: a trained network wrapped in a second stage (zero-shot, MLP head), every
backbone and aggregator option composing for every group, the command-line contract; the method folder is
the list the docs table and the sweeps read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

import train as train_script
from gevit.groups import get_group
from gevit.posthoc import (
    vit_backbone,
)
from lightning_modules import PostHocClassifier
from runkit.checkpoint_loading import checkpoint_backbone, network_from_checkpoint
from tests.support.compose import TINY_VIT, compose_config
from tests.support.posthoc import AGGREGATORS, BACKBONES, LEARNED, REPO, TINY_BACKBONE_OVERRIDES, regimes_of

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
    weights = cfg.model.backbone.get("ckpt_path")
    if name == "peer_vit" and not Path(weights).is_file():  # the reference checkpoint of ../shared/data
        pytest.skip(f"{weights} is absent (optional reference data)")
    model = hydra.utils.instantiate(cfg.model).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_two_stage_zero_shot_wraps_the_trained_backbone(stage1, tmp_path):
    metrics, objects = stage2(tmp_path, f"model.backbone.ckpt_path={stage1}", "model.group=p16")
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
        tmp_path / "vit", f"model.backbone.ckpt_path={stage1}", "model.group=p16", *TINY_BACKBONE_OVERRIDES
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
        "model.group=mz2",
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
    """docs/posthoc.md's methods table is `python -m runkit.posthoc_methods methods-table`: every row
    it has is the generated row of an existing method (stale or removed methods fail); a method of the
    folder without a row only warns, so that adding a method stays one module + one yaml."""
    import warnings

    from runkit.posthoc_methods import methods_table_rows

    text = (REPO / "docs" / "posthoc.md").read_text()
    table = text.split("<!-- methods-table:start")[1].split("<!-- methods-table:end -->")[0]
    documented = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    generated = methods_table_rows()
    assert set(documented) <= set(generated), f"docs rows without a yaml: {set(documented) - set(generated)}"
    for name, row in documented.items():
        assert row == generated[name], (
            f"the docs row of {name} is stale: regenerate it with python -m runkit.posthoc_methods methods-table"
        )
    if set(generated) - set(documented):
        warnings.warn(
            f"docs/posthoc.md has no row for {sorted(set(generated) - set(documented))}; "
            "python -m runkit.posthoc_methods methods-table prints it"
        )


def test_the_sweeps_read_the_folder(capsys):
    from runkit.posthoc_methods import _main

    _main(["aggregators", "--learned"])
    assert capsys.readouterr().out.strip().split(",") == sorted(LEARNED)
    _main(["aggregators", "--fixed"])
    assert capsys.readouterr().out.strip().split(",") == sorted(set(AGGREGATORS) - LEARNED)
    grid = (REPO / "multirun" / "posthoc_grid.sh").read_text()
    assert "runkit.posthoc_methods aggregators --fixed" in grid and "aggregators --learned" in grid
