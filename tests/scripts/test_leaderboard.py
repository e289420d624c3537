"""multirun/leaderboard.sh and scripts/leaderboard.py: the table from synthetic metrics.json files, and a
two-family slice of the smoke run (a tiny ViT and its zero-shot C4 wrapper: the two-stage pattern), rerun
in the same folder to show that completed runs are kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import leaderboard  # noqa: E402


def write_run(folder: Path, acc: float, status: str = "completed", error: float = 1e-6) -> None:
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
                "rotation_robustness": {"angles": [0, 45, 90], "accuracy": [acc, acc - 0.1, acc]},
            }
        )
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
    assert "| (3/3) | 92.00 ± 2.00 | 1.0e-06 | 82.0 | 63,338 | 40.0 | 5.0 |" in rows["eqcvt"]
    assert "| (1/2) | 40.00 | " in rows["vit"]  # the failed run is counted, not averaged; one run: no spread
    assert "Machine: test machine" in text and "eqcvt 15 epochs" in text
    assert (sweep / "results.md").read_text() == text and (sweep / "leaderboard.png").stat().st_size > 5_000


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
    assert (folder / "leaderboard.png").is_file()
    assert sorted(p.parent.relative_to(folder).as_posix() for p in folder.rglob("metrics.json")) == [
        "posthoc_c4_zero_shot/seed0",
        "vit/seed0",
    ]
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("metrics.json")}

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("completed before, kept") == 2
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("metrics.json")} == before
    assert (
        not (REPO / "docs" / "leaderboard.md").exists() or "smoke" not in (REPO / "docs" / "leaderboard.md").read_text()
    )


def test_a_planned_family_not_run_yet_gets_a_row_of_dashes(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "eqcvt" / "seed0", 0.94)
    text = leaderboard.main([str(sweep), "--machine", "m", "--seeds", "3", "--families", "eqcvt,hybrid_p4m"])
    assert "| eqcvt | (1/3) | 94.00 | " in text
    assert "| hybrid_p4m | (0/3) | – | – | – | – | – | – |" in text
