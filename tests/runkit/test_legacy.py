"""Checkpoints of earlier versions (runkit.legacy): the model configs they stored, copied here as the old code
wrote them, rebuild today's modules with the same weights and logits, through load_run and the post-hoc
checkpoint backbone; a config already in today's form is left alone."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from runkit.checkpoint_loading import load_run
from runkit.legacy import upgrade_model_config
from runkit.run_config import CheckpointMismatchError, check_eval_checkpoint

_DATA = {"num_classes": 10, "in_channels": 1, "image_size": 28, "input_mean": [0.1307], "input_std": [0.3081]}
_OPTIMISATION = {
    "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001, "weight_decay": 0.0001},
    "scheduler": None,
    "scheduler_interval": "epoch",
    "label_smoothing": 0.0,
}
_GEVIT_OPTIONS = {
    "encoding": "gevit",
    "num_channels": 8,
    "num_heads": 2,
    "expansion_per_block": 1,
    "norm": "layer",
    "activation": "swish",
    "attention_dropout": 0.1,
    "value_dropout": 0.1,
    "input_dropout": 0.0,
    "normalize_between_layers": False,
    "maxpool_after_last_block": False,
    "dropout_after_maxpool": 0.0,
    "group_pooling": "max",
    "whitening_scale": 1.41421356,
}
# The stored model configs of tiny runs of the code before the one-build-idiom change (commit 6ceda6a^,
# `train.py model=gevit model.patch_size=3 ...`, `model=hybrid model.group=p4m ...`, `model=posthoc ...`).
OLD_GEVIT = {
    "_target_": "lightning_modules.GroupTransformerClassifier",
    **_DATA,
    "group": "p4",
    "patch_size": 3,
    **_GEVIT_OPTIONS,
    "block_sizes": [1, 1],
    "crop_per_layer": [0, 0],
    "spatial_pooling": "sum",
    "init_from": None,
    **_OPTIMISATION,
}
OLD_HYBRID = {
    "_target_": "lightning_modules.HybridClassifier",
    **_DATA,
    "group": "p4m",
    "stem": "escnn",
    "stem_channels": [2, 4],
    "stem_kernel_size": 3,
    "downsample": "avg",
    "pool_sigma": 0.66,
    "embed_patch_size": 4,
    "embed_dim": 4,
    "patch_size": 3,
    **_GEVIT_OPTIONS,
    "block_sizes": [1],
    "crop_per_layer": 0,
    "spatial_pooling": "mean",
    **_OPTIMISATION,
}
OLD_POSTHOC = {
    "backbone": {
        "source": "vit",
        "ckpt_path": None,
        "patch_size": 4,
        "embed_dim": 16,
        "depth": 1,
        "num_heads": 2,
        "mlp_hidden_dim": 32,
        "dropout": 0.1,
    },
    "aggregator": {"name": "lambda", "hidden_dim": 128, "normalization": "softmax"},
    "_target_": "lightning_modules.PostHocClassifier",
    "_convert_": "all",
    **_DATA,
    "group": "c4",
    "regime": "aggregator_only",
    "interpolation": "bilinear",
    "padding": "zeros",
    **_OPTIMISATION,
}


def _old_checkpoint(tmp_path, old_config: dict, name: str):
    """A checkpoint as the old code wrote it: the old config beside weights of the same architecture."""
    import hydra
    from omegaconf import OmegaConf

    today, changes = upgrade_model_config(old_config)
    assert changes
    torch.manual_seed(0)
    module = hydra.utils.instantiate(OmegaConf.create(today)).eval()
    path = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": module.state_dict(), "gevit_model_config": copy.deepcopy(old_config)}, path)
    return path, module


@pytest.mark.parametrize(
    "old_config, net",
    [(OLD_GEVIT, "GroupTransformer"), (OLD_HYBRID, "HybridViT"), (OLD_POSTHOC, "PostHocInvariant")],
    ids=["gevit", "hybrid", "posthoc"],
)
def test_an_old_checkpoint_rebuilds_with_the_same_logits(tmp_path, caplog, old_config, net):
    path, reference = _old_checkpoint(tmp_path, old_config, net)
    with caplog.at_level(logging.INFO, logger="runkit.legacy"):
        run = load_run(path)
    assert type(run.module.net).__name__ == net
    assert "written by an earlier version" in caplog.text
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(run.module(images), reference(images), rtol=1e-5, atol=1e-5)


def test_the_translation_names_what_changed():
    today, changes = upgrade_model_config(OLD_GEVIT)
    assert today["_target_"] == "lightning_modules.ImageClassifier"
    assert today["net"]["_target_"] == "gevit.models.GroupTransformer"
    assert today["net"]["attention_window"] == 3 and "patch_size" not in today["net"]
    assert today["net"]["image_size"] == today["image_size"] == 28
    assert {"optimizer", "init_from", "input_mean"} <= set(today) and "group" not in today
    assert changes == [
        "lightning_modules.GroupTransformerClassifier -> lightning_modules.ImageClassifier with net "
        "gevit.models.GroupTransformer (patch_size->attention_window)"
    ]
    posthoc, changes = upgrade_model_config(OLD_POSTHOC)
    assert posthoc["backbone"]["_target_"] == "gevit.posthoc.backbones.vit_backbone"
    assert posthoc["aggregator"]["_target_"].endswith("LambdaAggregator") and "name" not in posthoc["aggregator"]
    assert posthoc["aggregator"]["features"] == "embedding"  # a key the old config lacked: today's yaml value
    assert len(changes) == 2


def test_an_old_config_naming_the_window_twice_is_refused_unless_both_agree():
    both = {**OLD_GEVIT, "attention_window": 5}
    with pytest.raises(ValueError, match=r"both patch_size=3 .* and attention_window=5"):
        upgrade_model_config(both)
    agreeing, _ = upgrade_model_config({**OLD_GEVIT, "attention_window": 3})
    assert agreeing["net"]["attention_window"] == 3 and "patch_size" not in agreeing["net"]


def test_a_config_in_todays_form_is_left_alone():
    today, _ = upgrade_model_config(OLD_GEVIT)
    again, changes = upgrade_model_config(today)
    assert again == today and changes == []


def test_an_old_checkpoint_is_a_post_hoc_backbone(tmp_path):
    from runkit.checkpoint_loading import network_from_checkpoint

    path, reference = _old_checkpoint(tmp_path, OLD_GEVIT, "gevit")
    net = network_from_checkpoint(path).eval()
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net(images), reference.net(images), rtol=1e-5, atol=1e-5)


def test_evaluating_an_old_checkpoint_warns_about_newer_options_only(caplog):
    stored = {"model": upgrade_model_config(OLD_GEVIT)[0]}
    current = copy.deepcopy(stored)
    current["model"]["net"]["zero_init_head"] = False  # an option added after the checkpoint was written
    with caplog.at_level(logging.WARNING, logger="runkit.run_config"):
        check_eval_checkpoint("old.ckpt", stored, current)
    assert "predates the options model.net.zero_init_head=false" in caplog.text
    current["model"]["net"]["num_heads"] = 4  # a stored option set differently is still refused
    with pytest.raises(CheckpointMismatchError, match="model.net.num_heads: 2 in the checkpoint, 4 now"):
        check_eval_checkpoint("old.ckpt", stored, current)
