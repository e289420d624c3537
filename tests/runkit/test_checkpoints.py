"""runkit.load_run: any train.py checkpoint rebuilt from the config stored in it (no training here: the
checkpoints are written by hand in the format the LightningModules write; tests/scripts/test_visualize.py loads
real ones)."""

from __future__ import annotations

import argparse

import pytest
import torch

from runkit.checkpoint_loading import CONFIG_KEY, CheckpointError, instantiate_model, load_run, rebuild_config

SIZE = 16


def hybrid_escnn_config() -> dict:
    """An end-to-end config whose network has escnn convolutions (a hybrid ViT with an escnn stem)."""
    return {
        "_target_": "lightning_modules.ImageClassifier",
        "num_classes": 10,
        "in_channels": 1,
        "image_size": SIZE,
        "input_mean": [0.5],
        "input_std": [0.25],
        "net": {
            "_target_": "gevit.models.HybridViT",
            "group": "p4",
            "in_channels": 1,
            "num_classes": 10,
            "image_size": SIZE,
            "stem": "escnn",
            "stem_channels": [2, 2],
            "stem_kernel_size": 3,
            "num_channels": 8,
            "num_heads": 2,
            "block_sizes": [1],
            "attention_window": 3,
        },
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    }


def test_an_escnn_checkpoint_saved_in_eval_mode_with_its_filter_caches_loads(tmp_path):
    config = hybrid_escnn_config()
    torch.manual_seed(0)
    trained = instantiate_model(config, "here").eval()
    state = trained.state_dict()
    # escnn convolutions hold their expanded filter only in eval mode; older checkpoints carried it
    caches = {
        f"{name}.filter": module.filter.detach().clone()
        for name, module in trained.named_modules()
        if hasattr(module, "filter") and isinstance(getattr(module, "filter"), torch.Tensor)
    }
    assert caches, "the hybrid's escnn stem should hold expanded filters in eval mode"
    torch.save({"state_dict": {**state, **caches}, CONFIG_KEY: config, "epoch": 0}, tmp_path / "escnn.ckpt")
    module, stored, path = load_run(tmp_path / "escnn.ckpt")
    assert stored == config and path == tmp_path / "escnn.ckpt" and not module.training
    images = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(module(images), trained(images), atol=1e-6)


def test_rebuilding_switches_off_initial_weights_anywhere_in_the_config(tmp_path):
    existing = tmp_path / "stage1.ckpt"
    existing.write_bytes(b"")
    missing: list[str] = []
    config = {
        "_target_": "x.Y",
        "init_from": "official.pt",
        "init_aggregator_from": "runs/earlier",
        "net": {"_target_": "timm.create", "pretrained": True, "weights": "w.pth"},
        "backbone": {"source": "checkpoint", "ckpt_path": str(existing)},
        "others": [
            {"ckpt_path": str(tmp_path / "gone.ckpt")},
            {"source": "peer_vit", "ckpt_path": "peer.pt", "embed_dim": 64},
        ],
    }
    rebuilt = rebuild_config(config, missing)
    assert (
        rebuilt["init_from"] is None
        and rebuilt["init_aggregator_from"] is None
        and rebuilt["net"]["pretrained"] is False
        and rebuilt["net"]["weights"] is None
    )
    assert rebuilt["backbone"]["ckpt_path"] == str(existing)  # a checkpoint backbone's architecture lives there
    assert rebuilt["others"][0]["ckpt_path"] is None and missing == [str(tmp_path / "gone.ckpt")]
    assert rebuilt["others"][1] == {"source": "vit", "embed_dim": 64}  # the peer ViT is this project's ViT
    assert config["init_from"] == "official.pt"  # the stored config is left as it was


def test_not_a_rebuildable_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nothing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="stores no model config"):
        load_run(tmp_path / "bare.ckpt")
    torch.save(
        {"state_dict": {"net.weight": torch.zeros(1)}, CONFIG_KEY: hybrid_escnn_config()}, tmp_path / "mismatch.ckpt"
    )
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_run(tmp_path / "mismatch.ckpt")
    renamed = {**hybrid_escnn_config(), "_target_": "lightning_modules.NoSuchClassifier"}
    torch.save({"state_dict": {}, CONFIG_KEY: renamed}, tmp_path / "renamed.ckpt")
    with pytest.raises(CheckpointError, match=r"cannot be built by this version.*NoSuchClassifier.*renamed or removed"):
        load_run(tmp_path / "renamed.ckpt")
    # an object pickled by reference (e.g. hyper-parameters saved as a Namespace): the safe unpickler refuses it
    torch.save({"state_dict": {}, "hparams": argparse.Namespace(lr=0.1)}, tmp_path / "opaque.ckpt")
    with pytest.raises(CheckpointError, match=r"argparse.Namespace.*could run code"):
        load_run(tmp_path / "opaque.ckpt")
