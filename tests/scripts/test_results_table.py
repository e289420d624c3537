"""scripts/results_table.py on a synthetic sweep folder laid out as Hydra and train.py write it."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.results_table import main

REPO = Path(__file__).resolve().parents[2]


def make_job(folder: Path, overrides: list[str], status: str = "completed", **metrics) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "metrics.json").write_text(json.dumps({"status": status, "run_group": "posthoc/2026", **metrics}))
    return folder


@pytest.fixture
def sweep(tmp_path):
    """Two sub-sweeps of one table: aggregator x regime x 3 seeds, one run failed, plus submitit's folder."""
    root = tmp_path / "posthoc_rotmnist" / "multiruns" / "2026-11-25_10-00-00"
    common = ["experiment=posthoc_rotmnist", "model.backbone.ckpt_path=/runs/vit/best.ckpt", "model.group=c4"]
    accuracies = {
        ("mean", "zero_shot"): [0.90, 0.92, 0.91],
        ("mean", "full"): [0.95, 0.96, 0.97],
        ("lambda", "aggregator_only"): [0.93, 0.94, None],
    }
    job = 0
    for (aggregator, regime), values in accuracies.items():
        sub = "fixed" if aggregator == "mean" else "learned"
        for seed, acc in enumerate(values):
            overrides = [*common, f"model/aggregator={aggregator}", f"model.regime={regime}", f"seed={seed}"]
            if acc is None:
                make_job(root / sub / str(job), overrides, status="failed: NonFiniteLossError: nan")
            else:
                make_job(
                    root / sub / str(job),
                    overrides,
                    **{"val/acc_best": acc + 0.01, "test/acc": acc, "model/params": 1000},
                )
            job += 1
    (root / "fixed" / ".submitit" / "1").mkdir(parents=True)
    (root / "fixed" / ".submitit" / "1" / "metrics.json").write_text("{}")  # never a run
    return root


def test_table_rows_are_methods_columns_are_regimes(sweep, tmp_path):
    markdown = main([str(sweep), "--out", str(tmp_path / "table")])
    lines = markdown.splitlines()
    header = lines[0]
    assert header.startswith("| aggregator |")
    for column in ("regime=zero_shot val", "regime=zero_shot test", "regime=full test", "regime=aggregator_only test"):
        assert column in header
    mean_row = next(line for line in lines if line.startswith("| mean |"))
    expected = (
        f"{100 * statistics.fmean([0.90, 0.92, 0.91]):.2f} ± {100 * statistics.stdev([0.90, 0.92, 0.91]):.2f} (3)"
    )
    assert expected in mean_row
    lambda_row = next(line for line in lines if line.startswith("| lambda |"))
    assert "93.50 ± 0.71 (2/3)" in lambda_row  # the failed seed is counted, not hidden
    assert (tmp_path / "table" / "results.md").read_text() == markdown

    with open(tmp_path / "table" / "results.csv") as f:
        cells = list(csv.DictReader(f))
    full_test = next(
        c
        for c in cells
        if c["model/aggregator"] == "mean" and c["model.regime"] == "full" and c["metric"] == "test/acc"
    )
    assert float(full_test["mean"]) == pytest.approx(0.96) and full_test["n"] == "3"
    with open(tmp_path / "table" / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 9 and sum(r["status"] != "completed" for r in runs) == 1


def test_explicit_rows_columns_and_metrics(sweep, tmp_path):
    markdown = main(
        [
            str(sweep),
            "--rows",
            "model/aggregator",
            "model.regime",
            "--columns",
            "--metrics",
            "test/acc",
            "--digits",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert markdown.splitlines()[0] == "| aggregator | regime | test |"
    assert "| mean | full | 96.0 ± 1.0 (3) |" in markdown


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json below"):
        main([str(tmp_path)])


def test_command_line(sweep):
    done = subprocess.run(
        [sys.executable, "scripts/results_table.py", str(sweep)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "| aggregator |" in done.stdout and (sweep / "results.md").is_file()
    assert "1 not completed" in done.stderr
