"""scripts/results_table.py on a synthetic sweep folder laid out as Hydra and train.py write it."""

from __future__ import annotations

import csv
import json
import shutil
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
    common = ["experiment=posthoc_rotmnist", "model.backbone.ckpt_path=/runs/vit/best.ckpt", "model.group=p4"]
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
        [sys.executable, "-m", "scripts.results_table", str(sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "| aggregator |" in done.stdout and (sweep / "results.md").is_file()
    assert "1 not completed" in done.stderr


def write_settings(folder: Path, **settings) -> None:
    """The run's config_resolved.yaml (a nested config, as train.py writes it)."""
    config: dict = {}
    for dotted, value in settings.items():
        node = config
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump(config))


def plan(folder: Path, overrides: list[str]) -> None:
    """The multirun.yaml Hydra writes at the start of a grid sweep (its sweeper and command-line overrides)."""
    folder.mkdir(parents=True, exist_ok=True)
    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    (folder / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"sweeper": sweeper, "overrides": {"task": overrides}}})
    )


def test_jobs_without_metrics_and_jobs_never_started_are_counted_and_listed(tmp_path):
    sweep = tmp_path / "sweep"
    plan(sweep, ["model.group=p4,p8", "seed=0,1"])
    make_job(sweep / "0", ["model.group=p4", "seed=0"], **{"val/acc_best": 0.5, "test/acc": 0.4})
    make_job(sweep / "1", ["model.group=p4", "seed=1"], **{"val/acc_best": 0.6, "test/acc": 0.5})
    # job 2 failed before train.py wrote metrics.json: only Hydra's folder is there
    (sweep / "2" / ".hydra").mkdir(parents=True)
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model.group=p8", "seed=0"]))
    # job 3 (p8, seed 1) never started: no folder at all
    markdown = main([str(sweep), "--out", str(tmp_path / "table")])
    assert "| p4 | 55.00 ± 7.07 (2) | 45.00 ± 7.07 (2) |" in markdown
    assert "| p8 | — (0/2) | — (0/2) |" in markdown
    assert "Not completed: 2 of 4 runs." in markdown
    assert f"`{sweep / '2'}`: no metrics.json" in markdown and "never started" in markdown
    with open(tmp_path / "table" / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_runs_without_hydra_folders_are_named_by_their_settings_not_merged(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (size, seed, acc) in enumerate([(256, 0, 0.5), (256, 1, 0.6), (512, 0, 0.9)]):
        folder = sweep / str(job)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"status": "completed", "test/acc": acc, "val/acc_best": acc}))
        write_settings(folder, seed=seed, data__train_size=size, paths__output_dir=str(folder))
    markdown = main([str(sweep), "--out", str(tmp_path / "table"), "--metrics", "test/acc"])
    assert markdown.splitlines()[0] == "| train_size | test |"
    assert "| 256 | 55.00 ± 7.07 (2) |" in markdown and "| 512 | 90.00 (1) |" in markdown


def test_runs_of_different_settings_in_one_cell_are_refused(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, size in ((0, 256), (1, 512)):
        folder = make_job(sweep / str(seed), [f"seed={seed}"], **{"val/acc_best": 0.5, "test/acc": 0.5})
        write_settings(folder, seed=seed, data__train_size=size)
    with pytest.raises(
        ValueError, match=r"refusing to average runs of different settings .*data.train_size=256 vs 512"
    ):
        main([str(sweep), "--out", str(tmp_path / "table")])


def test_the_same_run_twice_is_refused(sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep / "fixed", copy)
    with pytest.raises(ValueError, match="holds seed 0 twice"):
        main([str(sweep), str(copy), "--out", str(tmp_path / "table")])
    with pytest.raises(ValueError, match="again .*given twice"):
        main([str(sweep), str(sweep / "fixed"), "--out", str(tmp_path / "table")])
    done = subprocess.run(
        [sys.executable, "-m", "scripts.results_table", str(sweep), str(copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("results_table: cell ")


def test_rows_and_metrics_that_match_nothing_are_warned_about(sweep, tmp_path, capsys):
    main([str(sweep), "--rows", "model.grup", "--metrics", "test/acc", "test/acc_typo", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "warning: --rows/--columns model.grup: no run has this setting" in err
    assert "warning: --metrics test/acc_typo: no run reports it" in err
