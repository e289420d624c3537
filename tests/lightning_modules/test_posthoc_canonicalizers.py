"""Canonicalizers through train.py: their own training terms and canonicalizer accuracy are logged, and every
post-hoc run reports the accuracy per element of its group (test/acc_group_element_i, test/group_acc) in
metrics.json."""

from __future__ import annotations

import pytest

import train as train_script
from gevit.groups import get_group
from tests.support.compose import compose_config

TINY = [
    "model/backbone=vit",
    "model.backbone.embed_dim=16",
    "model.backbone.depth=1",
    "model.backbone.num_heads=2",
    "model.backbone.mlp_hidden_dim=32",
    "debug=fdr",
    "data.variant=upright_train",
    "data.train_size=16",
    "data.val_size=8",
    "data.test_size=8",
    "data.batch_size=8",
    "callbacks.rotation_robustness.max_samples=8",
    "callbacks.rotation_robustness.step_deg=90",
]


@pytest.mark.parametrize(
    "aggregator, group, terms",
    [
        ("canonicalization_steerable", "d4", ["prior"]),
        ("canonicalization_optimized", "c4", ["prior", "contrast"]),
        ("mean", "c8", []),
    ],
)
def test_runs_log_the_canonicalizer_terms_and_the_accuracy_per_group_element(aggregator, group, terms, tmp_path):
    regime = "aggregator_only" if terms else "zero_shot"
    options = ["model.aggregator.prior_weight=1", "model.aggregator.width=2"] if terms else []
    cfg = compose_config(
        ["model=posthoc", f"model/aggregator={aggregator}", f"model.group={group}", f"model.regime={regime}"]
        + TINY
        + options,
        tmp_path,
    )
    metrics, _ = train_script.run(cfg)
    assert metrics["status"] == "completed"
    order = get_group(group).order
    elements = [metrics[f"test/acc_group_element_{i}"] for i in range(order)]
    assert f"test/acc_group_element_{order}" not in metrics
    assert metrics["test/group_acc"] == pytest.approx(sum(elements) / order)
    for term in terms:
        assert f"train/canon_{term}" in metrics
    if terms:
        assert 0 <= metrics["val/canon_acc"] <= 1 and 0 <= metrics["test/canon_acc"] <= 1
        # an exactly invariant model is equally right on every transformed copy of the test images
        assert max(elements) == min(elements) == pytest.approx(metrics["test/group_acc"])
