"""Adding a post-hoc method is one module plus one yaml: in a copy of the repository, a copy of mean.py as
centroid.py and conf/model/aggregator/centroid.yaml — nothing else edited — train through train.py, are
listed for every sweep grid and are parametrised by the post-hoc tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COPIED = (
    "gevit",
    "lightning_modules",
    "runkit",
    "conf",
    "tests",
    "multirun",
    "docs",
)  # resolved through __file__: copied
CHECK = """
import sys
from runkit.posthoc_methods import aggregator_catalog
from tests.support.posthoc import AGGREGATORS
from tests.train.test_posthoc_runs import test_docs_methods_table_matches_the_folder
import train as train_script
from tests.support.compose import compose_config

catalog = aggregator_catalog()
assert "centroid" in catalog and not catalog["centroid"].learned and "centroid" in AGGREGATORS
test_docs_methods_table_matches_the_folder()  # only warns about the new, undocumented row
cfg = compose_config(["model=posthoc", "model/aggregator=centroid", "model.regime=full", "debug=fdr",
                      "data.train_size=16", "data.val_size=8", "data.test_size=8", "data.batch_size=8",
                      "callbacks.rotation_robustness.max_samples=4", "callbacks.rotation_robustness.step_deg=90",
                      "model.backbone.embed_dim=16", "model.backbone.depth=1", "model.backbone.num_heads=2",
                      "model.backbone.mlp_hidden_dim=32"], sys.argv[1])
metrics, objects = train_script.run(cfg)
assert metrics["status"] == "completed" and objects["model"].net.aggregator.name == "centroid"
print("OK")
"""


@pytest.mark.slow  # two fresh interpreters and a train.py run (~1 min on an idle 2-core machine)
def test_a_new_method_is_one_module_and_one_yaml(tmp_path):
    copy = tmp_path / "repo"
    copy.mkdir()
    for entry in REPO.iterdir():
        if entry.name in COPIED:
            shutil.copytree(entry, copy / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif entry.name not in (".git", "logs"):
            (copy / entry.name).symlink_to(entry)
    aggregators = copy / "gevit" / "posthoc" / "aggregators"
    shutil.copy(aggregators / "mean.py", aggregators / "centroid.py")
    (copy / "conf" / "model" / "aggregator" / "centroid.yaml").write_text(
        "_target_: gevit.posthoc.aggregators.centroid.MeanAggregator\n_partial_: true\n"
    )

    env = {**os.environ, "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(copy)}
    listed = subprocess.run(
        [sys.executable, "-m", "runkit.posthoc_methods", "aggregators", "--fixed"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0 and "centroid" in listed.stdout.split(","), listed.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "run")],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
