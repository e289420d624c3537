"""The multirun/ scripts end to end: their smoke variants run the sweep on the embedded digits and end
with the results table. The default run takes a slice of each grid (env vars of the scripts); the slow
marker runs every smoke sweep whole."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (REPO / "multirun").glob("*.sh") if p.name not in {"lib.sh", "posthoc_grid.sh"})

# A slice of each grid that still runs every sub-sweep and the table.
SLICES = {
    "vit_baselines.sh": {"SEEDS": "0"},
    "gevit_grid.sh": {"GEVIT_GROUPS": "z2", "GEVIT_PATCHES": "3", "SEEDS": "0,1"},
    "hybrid.sh": {"SEEDS": "0"},
    "eqcvt.sh": {"SEEDS": "0"},
    "posthoc_rotmnist.sh": {
        "VIEW_GROUPS": "p4",
        "REGIMES": "zero_shot",
        "POSTHOC_FIXED": "mean",
        "POSTHOC_LEARNED": "lambda",
        "SEEDS": "0",
    },
    "posthoc_two_phase.sh": {
        "VIEW_GROUPS": "p4",
        "PHASE2_REGIMES": "full,backbone_only",
        "POSTHOC_LEARNED": "lambda",
        "SEEDS": "0",
    },
}
EXPECTED_ROWS = {
    "vit_baselines.sh": 2,
    "gevit_grid.sh": 2,
    "hybrid.sh": 4,
    "eqcvt.sh": 3,
    "posthoc_rotmnist.sh": 3,
    "posthoc_two_phase.sh": 1,
}


def run_smoke(script: str, tmp_path: Path, extra_env: dict, *hydra_args: str) -> Path:
    env = {
        **os.environ,
        **extra_env,
        "WANDB_MODE": "disabled",
        "CUDA_VISIBLE_DEVICES": "",
        "GEVIT_LOG_DIR": str(tmp_path),
        "PYTHON": str(Path(os.sys.executable)),
    }
    done = subprocess.run(
        ["bash", f"multirun/{script}", "smoke", *hydra_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (table,) = tmp_path.glob("*/multiruns/*/results.md")
    return table


def table_rows(table: Path) -> list[str]:
    return [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_every_table_script_is_covered():
    assert set(SCRIPTS) >= set(SLICES)
    posthoc = {s for s in SCRIPTS if s.startswith("posthoc_")}
    assert posthoc == {
        "posthoc_rotmnist.sh",
        "posthoc_mnist_to_rotmnist.sh",
        "posthoc_rotmnist_10pct.sh",
        "posthoc_pcam.sh",
        "posthoc_two_phase.sh",
    }  # three share posthoc_rotmnist's grid file


@pytest.mark.parametrize("script", sorted(SLICES))
def test_smoke_slice_runs_and_makes_a_table(script, tmp_path):
    table = run_smoke(script, tmp_path, SLICES[script])
    rows = table_rows(table)
    assert len(rows) == EXPECTED_ROWS[script], table.read_text()
    assert all("(" in row for row in rows)  # every cell reports its run count
    assert (table.parent / "results.csv").is_file() and (table.parent / "runs.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_whole_smoke_sweep(script, tmp_path):
    table = run_smoke(script, tmp_path, {})
    assert "(0/" not in table.read_text(), table.read_text()  # no cell without a completed run
