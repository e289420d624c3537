"""multirun/leaderboard.sh and scripts/leaderboard.py: the table from synthetic metrics.json files (the budgets
the runs had, debug runs left out, runs of other budgets refused), and a two-family slice of the smoke run (a
tiny ViT and its zero-shot C4 wrapper: the two-stage pattern), rerun in the same folder to show that completed
runs of the same settings are kept, a folder of other settings is refused, and a killed table is resumed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import leaderboard

REPO = Path(__file__).resolve().parents[2]


def write_run(
    folder: Path, acc: float, status: str = "completed", error: float = 1e-6, epochs: int = 15, trainer: str = ""
) -> None:
    """A run folder as train.py leaves it: metrics.json and the resolved config's budget."""
    folder.mkdir(parents=True)
    folder.joinpath("metrics.json").write_text(
        json.dumps(
            {
                "status": status,
                "test/acc": acc,
                "test/invariance_error_rot90": error,
                "model/params": 63338,
                "train/images_per_s": 40.0,
                "duration_s": 300.0,
                "epochs_trained": epochs,
                "data_sizes": {"train": 6000, "val": 1000, "test": 3000},
                "rotation_robustness": {"angles": [0, 45, 90], "accuracy": [acc, acc - 0.1, acc]},
            }
        )
    )
    folder.joinpath("config_resolved.yaml").write_text(
        f"trainer:\n  max_epochs: {epochs}\n{trainer}callbacks:\n  rotation_robustness:\n    max_samples: 2000\n"
    )


def test_table_from_metrics_files(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, acc in enumerate((0.90, 0.92, 0.94)):
        write_run(sweep / "eqcvt" / str(seed), acc)
    write_run(sweep / "vit" / "0", 0.40, error=0.3)
    write_run(sweep / "vit" / "1", 0.0, status="failed: RuntimeError")
    text = leaderboard.main(
        [
            str(sweep),
            "--machine",
            "test machine",
            "--command",
            "bash multirun/leaderboard.sh",
            "--budgets",
            "eqcvt 15 epochs",
        ]
    )
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| (3/3) | 15 | 92.00 ± 2.00 | 1.0e-06 | 82.0 | 63,338 | 40.0 | 5.0 |" in rows["eqcvt"]
    assert "| (1/2) | 15 | 40.00 | " in rows["vit"]  # the failed run is counted, not averaged; one run: no spread
    assert "Machine: test machine" in text and "eqcvt 15 epochs" in text
    # the header states the data the runs had, not a fixed claim
    assert "6,000 / 1,000 / 3,000 train / val / test images" in text and "accuracy at 45°: on 2,000 test images" in text
    assert (sweep / "results.md").read_text() == text and (sweep / "leaderboard.png").stat().st_size > 5_000


def write_csv_log(run: Path, version: int, rows: list[tuple]) -> None:
    """Lightning CSVLogger's file: per epoch a validation row and a training row (with time/elapsed_s)."""
    folder = run / "csv" / f"version_{version}"
    folder.mkdir(parents=True)
    lines = ["epoch,step,time/elapsed_s,train/acc,val/acc"]
    for epoch, elapsed, acc in rows:
        lines += [f"{epoch},{10 * epoch},,,{acc}", f"{epoch},{10 * epoch},{elapsed},0.5,"]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_learning_curves_merge_resumed_versions_and_average_seeds_by_epoch(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "gevit" / "seed0", 0.9, epochs=3)
    write_run(sweep / "gevit" / "seed1", 0.9, epochs=3)
    write_csv_log(sweep / "gevit" / "seed0", 0, [(0, 10.0, 0.5), (1, 20.0, 0.0)])  # killed in epoch 1 ...
    write_csv_log(sweep / "gevit" / "seed0", 1, [(1, 21.0, 0.7), (2, 31.0, 0.8)])  # ... and resumed
    write_csv_log(sweep / "gevit" / "seed1", 0, [(0, 12.0, 0.3), (1, 23.0, 0.5)])  # epoch 2 missing
    write_run(sweep / "posthoc_zero_shot" / "seed0", 0.5, epochs=0)
    write_csv_log(sweep / "posthoc_zero_shot" / "seed0", 0, [(0, 1.0, 0.5)])  # validated, nothing trained
    assert leaderboard.learning_curve(sweep / "gevit" / "seed0") == {
        0: {"val_acc": 0.5, "elapsed_s": 10.0},
        1: {"val_acc": 0.7, "elapsed_s": 21.0},
        2: {"val_acc": 0.8, "elapsed_s": 31.0},
    }
    curves = leaderboard.mean_learning_curves(leaderboard.collect(sweep))
    assert list(curves) == ["gevit (90.0 %)"]  # the zero-shot row has no learning curve
    assert curves["gevit (90.0 %)"]["epoch"] == [1, 2]
    assert curves["gevit (90.0 %)"]["val_acc"] == pytest.approx([0.4, 0.6])
    assert curves["gevit (90.0 %)"]["elapsed_s"] == pytest.approx([11.0, 22.0])
    text = leaderboard.main([str(sweep), "--machine", "m"])
    assert "](leaderboard_curves.png)" in text and (sweep / "leaderboard_curves.png").stat().st_size > 5_000


def test_smaller_budgets_are_stated_and_debug_runs_never_count(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "vit" / "seed0", 0.30, epochs=1)
    write_run(sweep / "eqcvt" / "seed0", 0.90, epochs=1, trainer="  fast_dev_run: true\n")
    metrics = json.loads((sweep / "vit" / "seed0" / "metrics.json").read_text())
    metrics["data_sizes"] = {"train": 256, "val": 128, "test": 128}
    (sweep / "vit" / "seed0" / "metrics.json").write_text(json.dumps(metrics))
    text = leaderboard.main([str(sweep), "--machine", "m", "--seeds", "1"])
    assert "3,000" not in text and "256 / 128 / 128 train / val / test images" in text
    assert "| vit | (1/1) | 1 | 30.00 |" in text
    assert "| eqcvt | (0/1, debug runs left out: fast_dev_run=True) | – | – |" in text


def test_runs_of_different_budgets_are_not_averaged(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "gevit" / "seed0", 0.50, epochs=3)
    write_run(sweep / "gevit" / "seed1", 0.55, epochs=15)
    with pytest.raises(ValueError, match="refusing to average runs of different budgets"):
        leaderboard.main([str(sweep), "--machine", "m"])


def test_check_run_keeps_only_a_run_of_the_same_settings(tmp_path):
    run = tmp_path / "vit" / "seed0"
    assert leaderboard.check_run(run, ["model=vit"]) == ("new", "")
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=vit\n- trainer.max_epochs=3\n- seed=0\n")
    assert leaderboard.check_run(run, ["seed=0", "model=vit", "trainer.max_epochs=3", "hydra.run.dir=x"])[0] == "resume"
    (run / "metrics.json").write_text(json.dumps({"status": "completed"}))
    assert leaderboard.check_run(run, ["model=vit", "trainer.max_epochs=3", "seed=0"])[0] == "keep"
    state, message = leaderboard.check_run(run, ["model=vit", "trainer.max_epochs=10", "seed=0", "debug=fdr"])
    assert state == "other"
    assert "trainer.max_epochs: 3 there, 10 now" in message and "debug: (not set) there, fdr now" in message
    with pytest.raises(SystemExit, match="holds a run of other settings"):
        leaderboard.main(["--check-run", str(run), "model=vit", "seed=0"])


def test_empty_sweep_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no <family>/<run>/metrics.json"):
        leaderboard.main([str(tmp_path)])


def test_smoke_slice_trains_a_family_and_wraps_it_and_a_rerun_keeps_what_completed(tmp_path):
    folder = tmp_path / "board"
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "CUDA_VISIBLE_DEVICES": "",
        "LEADERBOARD_DIR": str(folder),
        "PYTHON": sys.executable,
        "FAMILIES": "vit,posthoc_c4_zero_shot",
    }
    command = ["bash", "multirun/leaderboard.sh", "smoke"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    table = folder / "results.md"
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| vit", "| posthoc_c4_zero_shot"]
    assert all("(1/1)" in row for row in rows)
    assert (folder / "leaderboard.png").is_file() and (folder / "leaderboard_curves.png").is_file()
    records = json.loads((folder / "leaderboard_runs.json").read_text())["families"]
    assert sorted(records) == ["posthoc_c4_zero_shot", "vit"] and records["vit"][0]["run"] == "vit/seed0"
    assert sorted(p.parent.relative_to(folder).as_posix() for p in folder.rglob("metrics.json")) == [
        "posthoc_c4_zero_shot/seed0",
        "vit/seed0",
    ]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("metrics.json")}

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("completed before, kept") == 2
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("metrics.json")} == before

    # another budget into the same folder: refused before anything is trained, nothing touched
    other = subprocess.run(
        [*command, "trainer.max_epochs=2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert other.returncode != 0 and "holds a run of other settings" in other.stderr, other.stderr[-3000:]
    assert "trainer.max_epochs: 1 there, 2 now" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("metrics.json")} == before
    assert (
        not (REPO / "docs" / "leaderboard.md").exists() or "smoke" not in (REPO / "docs" / "leaderboard.md").read_text()
    )


def test_a_planned_family_not_run_yet_gets_a_row_of_dashes(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "eqcvt" / "seed0", 0.94)
    text = leaderboard.main([str(sweep), "--machine", "m", "--seeds", "3", "--families", "eqcvt,hybrid_p4m"])
    assert "| eqcvt | (1/3) | 15 | 94.00 | " in text
    assert "| hybrid_p4m | (0/3) | – | – | – | – | – | – | – |" in text
    # the rows follow the planned order, not the order the folders were written in
    write_run(sweep / "vit" / "seed0", 0.6)
    text = leaderboard.main([str(sweep), "--machine", "m", "--seeds", "3", "--families", "vit,hybrid_p4m,eqcvt"])
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == ["| vit", "| hybrid_p4m", "| eqcvt"]


def test_a_killed_table_is_resumed_by_the_same_command_and_another_one_is_named(tmp_path):
    """Without LEADERBOARD_DIR the newest unfinished table of the same settings is continued (here: a table whose
    only run was killed before it wrote anything); one of other settings is named, and a new folder started."""
    logs = tmp_path / "logs"
    killed = logs / "leaderboard_smoke" / "multiruns" / "2026-01-01_00-00-00"
    killed.mkdir(parents=True)
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "CUDA_VISIBLE_DEVICES": "",
        "GEVIT_LOG_DIR": str(logs),
        "PYTHON": sys.executable,
        "FAMILIES": "vit",
    }
    settings = (
        "smoke=true GEVIT_EPOCHS=20 HYBRID_EPOCHS=20 POSTHOC_EPOCHS=3 POSTHOC_ZERO_SHOT=mean POSTHOC_LEARNED=lambda"
        " CURVE_SAMPLES=500"
    )
    (killed / "leaderboard.started").write_text(settings + " arguments: \n")
    stand_in = tmp_path / "python"
    stand_in.write_text(
        f'#!/bin/sh\nif [ "$1" = train.py ]; then echo "$@" >> {tmp_path}/calls; exit 0; fi\nexec {sys.executable} "$@"\n'
    )
    stand_in.chmod(0o755)
    env["PYTHON"] = str(stand_in)  # train.py is not needed for what is checked here: a stand-in records its calls
    done = subprocess.run(
        ["bash", "multirun/leaderboard.sh", "smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert f"resuming the unfinished table in {killed}" in done.stderr, done.stderr[-3000:]
    assert f"hydra.run.dir={killed}/vit/seed0" in (tmp_path / "calls").read_text()

    (killed / "leaderboard.finished").unlink(missing_ok=True)
    other = subprocess.run(
        ["bash", "multirun/leaderboard.sh", "smoke", "trainer.max_epochs=2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"{killed} holds an unfinished table of other settings" in other.stderr, other.stderr[-3000:]
    assert f"LEADERBOARD_DIR={killed}" in other.stderr
    assert len(list((logs / "leaderboard_smoke" / "multiruns").iterdir())) == 2


def test_an_unknown_family_is_refused_before_any_folder_is_made(tmp_path):
    """FAMILIES picks from the families the script runs (its one list); a typo is an error naming them all."""
    folder = tmp_path / "board"
    env = {**os.environ, "LEADERBOARD_DIR": str(folder), "PYTHON": sys.executable, "FAMILIES": "gevit,gevti"}
    done = subprocess.run(
        ["bash", "multirun/leaderboard.sh", "smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "unknown family 'gevti'" in done.stderr and "gevit,gsanet,hybrid_p4" in done.stderr
    assert not folder.exists()


def test_the_run_records_rebuild_the_same_table_without_the_run_folders(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, acc in enumerate((0.90, 0.94)):
        write_run(sweep / "gevit" / f"seed{seed}", acc, epochs=2)
        write_csv_log(sweep / "gevit" / f"seed{seed}", 0, [(0, 10.0, acc - 0.2), (1, 20.0, acc - 0.1)])
    write_run(sweep / "vit" / "seed0", 0.40, epochs=2)
    run_file = sweep / "vit" / "seed0" / "metrics.json"  # a real run names its folders with absolute paths
    absolute = str((sweep / "vit" / "seed0").resolve())
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "output_dir": absolute}))
    records = tmp_path / "docs" / "leaderboard_runs.json"
    table = leaderboard.main(
        [
            str(sweep),
            "--out",
            str(tmp_path / "a" / "t.md"),
            "--runs-out",
            str(records),
            "--machine",
            "m",
            "--seeds",
            "2",
        ]
    )
    assert "`leaderboard_runs.json`](../docs/leaderboard_runs.json)" in table
    assert str(tmp_path) not in records.read_text()  # no machine's folders in a file meant to be committed
    assert json.loads(records.read_text())["families"]["vit"][0]["output_dir"] == "vit/seed0"
    shutil.rmtree(sweep)  # the records alone: numbers, budgets, learning curves, the header's facts
    rebuilt = leaderboard.main([str(records), "--out", str(tmp_path / "a" / "t.md")])
    assert rebuilt == table
    assert (tmp_path / "a" / "leaderboard_curves.png").stat().st_size > 5_000
    assert leaderboard.mean_learning_curves(leaderboard.collect(records))["gevit (92.0 %)"]["val_acc"] == pytest.approx(
        [0.72, 0.82]
    )
    records.write_text('{"families": {}}')
    with pytest.raises(ValueError, match="not a run-records file"):
        leaderboard.main([str(records)])


def test_a_resumed_run_counts_every_segment_in_its_wall_time():
    assert leaderboard.wall_time({"duration_s": 500.0, "run_duration_s": 1010.0}) == 1010.0
    # recorded before run_duration_s existed: at least the training time summed over segments
    assert leaderboard.wall_time({"duration_s": 500.0, "time/elapsed_s": 933.0}) == 933.0
    assert leaderboard.wall_time({"duration_s": 1010.0, "time/elapsed_s": 942.0}) == 1010.0
    assert leaderboard.wall_time({}) is None
