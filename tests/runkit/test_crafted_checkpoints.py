"""No code from a checkpoint: crafted files planted on every path a user can name a checkpoint on.

Two attacks: a checkpoint of plain dicts (it passes ``torch.load(weights_only=True)``) whose stored model config
names a ``_target_`` that writes a file, and a pickle that would run code. Each path must refuse both, write
nothing and run nothing; missing, corrupt and foreign files get one clear message each, naming the option."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import train as train_script
from gevit.checkpoint_io import (
    CheckpointError,
    CorruptCheckpointError,
    ForeignCheckpointError,
    MissingCheckpointError,
    UnsafeCheckpointError,
)
from runkit.checkpoint_loading import CONFIG_KEY, checkpoint_backbone, load_checkpoint, load_run
from runkit.config_validation import ConfigError
from runkit.trusted_targets import UntrustedConfigError, check_stored_config, conf_model_targets
from tests.support.compose import compose_config

REPO = Path(__file__).resolve().parents[2]


def vit_config(**net) -> dict:
    """A stored end-to-end config in the form train.py writes it."""
    return {
        "_target_": "lightning_modules.ImageClassifier",
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 28,
        "input_mean": [0.1],
        "input_std": [0.3],
        "net": {
            "_target_": "gevit.models.VisionTransformer",
            "image_size": 28,
            "in_channels": 1,
            "num_classes": 10,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "mlp_hidden_dim": 32,
            **net,
        },
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    }


def injections(marker: Path) -> dict[str, dict]:
    """Stored configs whose building would write ``marker``, one per place a ``_target_`` can sit."""
    writes = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    savetxt = {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}
    copy = {"_target_": "shutil.copyfile", "src": __file__, "dst": str(marker)}
    return {
        "top": {**vit_config(), "_target_": "builtins.open", "file": str(marker), "mode": "w"},
        "net": {**vit_config(), "net": savetxt},
        "optimizer": {**vit_config(), "optimizer": {**copy, "_partial_": False}},
        "nested option": vit_config(norm_layer=writes),
        "positional args": {**vit_config(), "extra": {"_target_": "builtins.print", "_args_": [writes]}},
        "interpolation": vit_config(embed_dim="${gevit_data_fact:shutil.copyfile,num_classes}"),
    }


def plant_config(path: Path, config: dict) -> Path:
    torch.save({"state_dict": {"net.cls_token": torch.zeros(1)}, CONFIG_KEY: config, "epoch": 0}, path)
    return path


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path, zipped: bool = True) -> Path:
    if zipped:
        torch.save({"state_dict": {"net.x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


def nothing_written(marker: Path) -> bool:
    return not marker.exists() and not (REPO / marker.name).exists()


# ---- the allow-list -----------------------------------------------------------------------------------------
def test_the_allow_list_is_what_conf_model_builds():
    targets = conf_model_targets()
    assert "lightning_modules.ImageClassifier" in targets and "gevit.models.GroupTransformer" in targets
    assert "runkit.checkpoint_loading.checkpoint_backbone" in targets and "torch.optim.Adam" in targets
    assert not any(t.startswith(("lightning.pytorch", "datamodules", "builtins")) for t in targets)
    # a torch optimiser or scheduler chosen on the command line is data too
    check_stored_config({"optimizer": {"_target_": "torch.optim.RMSprop"}}, "x")
    check_stored_config({"scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR"}}, "x")
    with pytest.raises(UntrustedConfigError, match=r"model\.optimizer\._target_='torch\.optim\.Optimizer\.zero_grad'"):
        check_stored_config({"optimizer": {"_target_": "torch.optim.Optimizer.zero_grad"}}, "x")
    check_stored_config({"net": {"_target_": "mypkg.Net"}}, "x", trusted=["mypkg.Net"])


@pytest.mark.parametrize("place", list(injections(Path("m"))))
def test_load_run_refuses_a_crafted_target_before_building_anything(place, tmp_path):
    marker = tmp_path / "written.txt"
    crafted = plant_config(tmp_path / "crafted.ckpt", injections(marker)[place])
    with pytest.raises(UntrustedConfigError, match="refusing to rebuild|interpolation") as err:
        load_run(crafted)
    assert str(crafted) in str(err.value) and "\n" not in str(err.value)
    assert nothing_written(marker)


def test_the_checkpoint_backbone_refuses_crafted_targets_and_pickles(tmp_path):
    marker = tmp_path / "written.txt"
    for place, config in injections(marker).items():
        with pytest.raises(UntrustedConfigError):
            checkpoint_backbone(10, 1, 28, ckpt_path=str(plant_config(tmp_path / f"{place}.ckpt", config)))
    with pytest.raises(UnsafeCheckpointError, match=r"model\.backbone\.ckpt_path=.*could run code"):
        checkpoint_backbone(10, 1, 28, ckpt_path=str(plant_pickle(tmp_path / "evil.ckpt", marker)))
    assert nothing_written(marker)


def test_a_post_hoc_run_over_a_crafted_backbone_checkpoint_is_refused(tmp_path):
    """The outer checkpoint is honest; the backbone checkpoint it names is the crafted one."""
    marker = tmp_path / "written.txt"
    inner = plant_config(tmp_path / "inner.ckpt", injections(marker)["net"])
    outer = {
        "_target_": "lightning_modules.PostHocClassifier",
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 28,
        "backbone": {
            "_target_": "runkit.checkpoint_loading.checkpoint_backbone",
            "_partial_": True,
            "ckpt_path": str(inner),
        },
        "aggregator": {"_target_": "gevit.posthoc.aggregators.mean.MeanAggregator", "_partial_": True},
    }
    with pytest.raises(UntrustedConfigError, match="inner.ckpt"):
        load_run(plant_config(tmp_path / "outer.ckpt", outer))
    itself = tmp_path / "itself.ckpt"
    outer["backbone"]["ckpt_path"] = str(itself)
    with pytest.raises(CheckpointError, match="names itself"):
        load_run(plant_config(itself, outer))
    assert nothing_written(marker)


# ---- every path, every kind of bad file -------------------------------------------------------------------
def _init_from(path):
    from gevit.models import GroupTransformer
    from lightning_modules import ImageClassifier

    net = GroupTransformer(num_classes=10, num_channels=8, num_heads=2, block_sizes=[0, 1], crop_per_layer=[0])
    ImageClassifier(net=net, num_classes=10, in_channels=1, image_size=28, init_from=str(path))


def _init_aggregator_from(path):
    from gevit.posthoc import vit_backbone
    from gevit.posthoc.aggregators.lambda_equitune import LambdaAggregator
    from lightning_modules import PostHocClassifier

    backbone = vit_backbone(10, 1, 28, embed_dim=16, depth=1, num_heads=2, mlp_hidden_dim=32)
    PostHocClassifier(
        backbone,
        LambdaAggregator(embed_dim=16),
        num_classes=10,
        in_channels=1,
        image_size=28,
        init_aggregator_from=str(path),
    )


def _vit_backbone(path):
    from gevit.posthoc import vit_backbone

    vit_backbone(10, 1, 28, ckpt_path=str(path), embed_dim=16, depth=1, num_heads=2, mlp_hidden_dim=32)


def _peer_vit(path):
    from gevit.posthoc.backbones import peer_vit_backbone

    peer_vit_backbone(10, 1, 28, ckpt_path=str(path))


def _resnet_weights(path):
    from gevit.posthoc.backbones import torchvision_resnet

    torchvision_resnet("resnet18", 10, 1, weights=str(path))


PATHS = {
    "ckpt_path": (lambda p: load_checkpoint(p, option="ckpt_path"), "ckpt_path="),
    "load_run": (load_run, ""),
    "model.backbone.ckpt_path": (
        lambda p: checkpoint_backbone(10, 1, 28, ckpt_path=str(p)),
        "model.backbone.ckpt_path=",
    ),
    "vit backbone": (_vit_backbone, "model.backbone.ckpt_path="),
    "peer vit": (_peer_vit, "model.backbone.ckpt_path="),
    "resnet weights": (_resnet_weights, "model.backbone.weights="),
    "model.init_from": (_init_from, "model.init_from="),
    "model.init_aggregator_from": (_init_aggregator_from, "model.init_aggregator_from="),
}


def bad_files(folder: Path, marker: Path) -> dict[str, tuple[Path, type]]:
    good = folder / "good.ckpt"
    torch.save({"state_dict": {"net.x": torch.zeros(4)}}, good)
    data = good.read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "text.ckpt").write_text("epoch,val/acc\n0,0.5\n")
    (folder / "random.ckpt").write_bytes(bytes(range(7, 250)) * 8)
    return {
        "missing": (folder / "missing.ckpt", MissingCheckpointError),
        "folder": (folder, MissingCheckpointError),
        "truncated": (folder / "truncated.ckpt", CorruptCheckpointError),
        "empty": (folder / "empty.ckpt", CorruptCheckpointError),
        "text": (folder / "text.ckpt", ForeignCheckpointError),
        "random bytes": (folder / "random.ckpt", ForeignCheckpointError),
        "pickle in torch's zip": (plant_pickle(folder / "evil.ckpt", marker), UnsafeCheckpointError),
        "plain pickle": (plant_pickle(folder / "evil.pkl", marker, zipped=False), UnsafeCheckpointError),
    }


@pytest.mark.parametrize("entry", list(PATHS))
def test_every_path_gives_one_message_per_kind_of_bad_file(entry, tmp_path):
    marker = tmp_path / "pwned.txt"
    call, option = PATHS[entry]
    for kind, (path, error) in bad_files(tmp_path, marker).items():
        with pytest.raises(error) as caught:
            call(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, (kind, message)
        assert option in message, (entry, kind, message)
        assert "KeyError" not in message and "OSError" not in message, (kind, message)
    assert nothing_written(marker)


def test_a_foreign_torch_file_is_named_as_such(tmp_path):
    """A good torch file that is not what the path asks for."""
    plain = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain)
    with pytest.raises(ForeignCheckpointError, match="not a checkpoint of this framework"):
        _vit_backbone(plain)
    with pytest.raises(ForeignCheckpointError, match="not a Lightning checkpoint"):
        load_run(plain)
    with pytest.raises(ForeignCheckpointError, match="not a state_dict"):
        _resnet_weights(plain)


# ---- the entry points a user types -----------------------------------------------------------------------
SMALL = [
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=32",
    "callbacks.rotation_robustness.max_samples=16",
    "logger=csv",
]


@pytest.mark.parametrize("attack", ["config", "pickle"])
def test_train_py_with_a_crafted_backbone_checkpoint_writes_nothing(attack, tmp_path):
    marker = tmp_path / "written.txt"
    crafted = tmp_path / "backbone.ckpt"
    if attack == "config":
        plant_config(crafted, injections(marker)["net"])
    else:
        plant_pickle(crafted, marker)
    overrides = ["model=posthoc", "model/backbone=checkpoint", f"model.backbone.ckpt_path={crafted}", *SMALL]
    with pytest.raises(ConfigError, match=r"model: .*(refusing to rebuild|could run code)"):
        train_script.run(compose_config(overrides, tmp_path / "run"))
    assert nothing_written(marker)


@pytest.mark.parametrize("attack", ["config", "pickle"])
def test_the_figures_refuse_a_crafted_checkpoint(attack, tmp_path, capsys):
    from scripts.visualize import main

    marker = tmp_path / "written.txt"
    crafted = tmp_path / "figure.ckpt"
    if attack == "config":
        plant_config(crafted, injections(marker)["top"])
    else:
        plant_pickle(crafted, marker)
    assert main(["latents", "--gevit-ckpt", str(crafted), "--out", str(tmp_path / "figures")]) == 2
    message = capsys.readouterr().err
    assert str(crafted) in message and ("refusing" in message)
    figures = tmp_path / "figures"
    assert nothing_written(marker) and not (figures.exists() and any(figures.iterdir()))
