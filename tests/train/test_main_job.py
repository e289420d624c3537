"""The main job (plain `python train.py`): the exactly C4-invariant hybrid recipe on RotMNIST-mini, its
figure beside a reference curve and its three-line summary. Composition only; the run itself is measured
by hand (README quick start)."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from runkit.callbacks import (
    RotationRobustnessCallback,
    plot_rotation_robustness,
    read_rotation_robustness_csv,
    run_summary,
)
from tests.support.compose import compose_config


def test_default_is_the_exactly_invariant_hybrid_recipe(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.model.net._target_ == "gevit.models.HybridViT" and cfg.model.net.handover == "regular"
    assert cfg.model.net.group == "p4" and cfg.model.optimizer.lr == 0.01
    assert (cfg.data.augmentation, cfg.data.batch_size, cfg.trainer.max_epochs) == ("rotation", 64, 20)
    assert cfg.model.scheduler.warmup_fraction == 0.1 and cfg.model.scheduler_interval == "step"
    assert cfg.callbacks.rotation_robustness.label.startswith("hybrid p4")
    net = instantiate(cfg.model.net).eval()
    assert sum(p.numel() for p in net.parameters()) == 12_928
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():  # float32 (escnn's kernels are float32): rounding only
        for p in net.parameters():  # the head starts at zero (logits 0): move every weight off its init
            p.add_(0.1 * torch.randn_like(p))
        logits = net(x)
        for k in (1, 2, 3):
            assert ((net(torch.rot90(x, k, (-2, -1))) - logits).norm() / logits.norm()).item() < 1e-4


def test_the_previous_main_job_keeps_its_recipe(tmp_path):
    cfg = compose_config(["model=eqcvt"], tmp_path)
    assert cfg.model.net._target_ == "gevit.models.EqCvT" and cfg.model.net.invariant is True
    assert cfg.model.net.group == "p4" and cfg.model.net.regular_fields == 16
    assert (cfg.data.augmentation, cfg.data.batch_size, cfg.trainer.max_epochs) == ("rotation", 64, 25)
    assert cfg.callbacks.rotation_robustness.label.startswith("EqCvT")
    assert sum(p.numel() for p in instantiate(cfg.model.net).parameters()) == 63_338


def test_other_models_and_recipe_off_compose_as_before(tmp_path):
    vit = compose_config(["model=vit"], tmp_path / "vit")
    assert vit.model.net._target_ == "gevit.models.VisionTransformer"
    assert (vit.data.augmentation, vit.data.batch_size, vit.trainer.max_epochs) == ("none", 128, 10)
    assert vit.model.scheduler is None and vit.callbacks.rotation_robustness.label is None
    plain = compose_config(["~recipe"], tmp_path / "plain")
    assert plain.model.optimizer.lr == 0.001 and plain.trainer.max_epochs == 10
    gevit = compose_config(["experiment=gevit_rotmnist_mini"], tmp_path / "gevit")
    assert gevit.model.net.zero_init_head is True and gevit.data.batch_size == 32


def _curve(acc):
    return {"angles": [0.0, 45.0, 90.0], "accuracy": acc, "invariance_error": [0.0, 0.1, 0.2]}


def test_reference_curve_is_read_and_drawn_beside_the_run(tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("angle_deg,accuracy,invariance_error,num_samples\n0,0.5,0,8\n45,0.3,0.4,8\n90,0.45,0.2,8\n")
    assert read_rotation_robustness_csv(ref)["accuracy"] == [0.5, 0.3, 0.45]
    callback = RotationRobustnessCallback(
        output_dir=str(tmp_path), reference=str(ref), reference_label="ViT (ref)", label="EqCvT (this run)"
    )
    assert callback.reference["angles"] == [0.0, 45.0, 90.0]
    plot_rotation_robustness(
        {"EqCvT (this run)": _curve([0.9, 0.9, 0.9]), "ViT (ref)": callback.reference}, tmp_path / "fig.png"
    )
    assert (tmp_path / "fig.png").stat().st_size > 5_000


def test_missing_or_malformed_reference_is_a_clear_error_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        RotationRobustnessCallback(reference=str(tmp_path / "nope.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("angle,acc\n0,1\n")
    with pytest.raises(ValueError, match="bad.csv.*angle_deg"):
        RotationRobustnessCallback(reference=str(bad))


def test_three_line_summary():
    lines = run_summary({"val/acc_best": 0.936, "test/acc": 0.9173, "test/invariance_error_rot90": 9.6e-7})
    assert lines == [
        "val acc (best):          93.60 %",
        "test acc:                91.73 %",
        "rot90 invariance error:  9.60e-07",
    ]
    assert run_summary({"test/acc": 0.5})[0].endswith("n/a")


def test_the_main_job_draws_the_committed_vit_curve_beside_its_own(tmp_path):
    cfg = compose_config([], tmp_path)
    callback = instantiate(cfg.callbacks.rotation_robustness)
    assert callback.label.startswith("hybrid p4") and callback.reference_label.startswith("plain ViT")
    assert callback.reference["angles"] == [float(a) for a in range(0, 360, 15)]
    assert 0.2 < min(callback.reference["accuracy"]) < max(callback.reference["accuracy"]) < 0.6  # not invariant
