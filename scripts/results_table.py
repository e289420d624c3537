"""Turn the run directories of one or more sweeps into the write-ups' results table — never typed by hand.

    python scripts/results_table.py logs/posthoc_rotmnist/multiruns/2026-11-25_10-00-00
    python scripts/results_table.py SWEEP --rows model/aggregator --columns model.regime --metrics val/acc_best test/acc
    python scripts/results_table.py SWEEP_A SWEEP_B --out docs/tables/gevit --wandb

Every job directory below the given folders that holds a ``metrics.json`` is one run. What a run *is*
comes from its Hydra overrides (``.hydra/overrides.yaml``, paths and logging details left out): the
overrides whose value differs between runs, except ``seed``, name the methods (rows) and the regimes
(columns; by default ``model.regime`` or else ``model.net.attention_window`` when swept). Runs that differ only in
their seed are repeats: each cell is ``mean ± std (n)`` over them (sample std; percentages for
accuracies). A cell whose runs did not all complete says so: ``(2/3)``.

Writes ``results.md`` (the table), ``results.csv`` (one line per cell and metric: mean, std, n, the
values) and ``runs.csv`` (one line per run) into ``--out`` (default: the first sweep folder), prints
the markdown, and with ``--wandb`` logs both tables to a W&B run of job type ``results_table`` (offline
without credentials; nothing when W&B is disabled).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # `python scripts/results_table.py` puts scripts/ on the path, not the repository with the packages.
    sys.path.insert(0, str(REPO_ROOT))

from runkit.naming import naming_overrides  # noqa: E402  (one definition of "what names a run")

DEFAULT_METRICS = ("val/acc_best", "test/acc")
DEFAULT_COLUMN_KEYS = ("model.regime", "model.net.attention_window")
REPEAT_KEYS = {"seed"}


@dataclass
class Run:
    """One job directory: its overrides (key -> value) and its metrics.json."""

    path: Path
    overrides: dict[str, str]
    metrics: dict = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.metrics.get("status") == "completed"


def natural_key(path: Path) -> list:
    """Sort ``.../fixed/10`` after ``.../fixed/9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    parsed = {}
    for override in naming_overrides([str(line) for line in lines]):
        key, _, value = override.partition("=")
        parsed[key] = value
    return parsed


def find_runs(folders: Sequence[Path]) -> list[Run]:
    """Every job directory with a ``metrics.json`` below ``folders`` (submitit's folders skipped)."""
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a directory (expected a sweep folder under logs/)")
        for metrics_file in sorted(folder.rglob("metrics.json"), key=natural_key):
            run_dir = metrics_file.parent
            if any(part.startswith(".") for part in run_dir.relative_to(folder).parts):
                continue
            try:
                metrics = json.loads(metrics_file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics_file} is not valid JSON ({err}); delete it or rerun the job") from err
            overrides_file = run_dir / ".hydra" / "overrides.yaml"
            overrides = (
                parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.is_file() else {}
            )
            runs.append(Run(run_dir, overrides, metrics))
    if not runs:
        raise FileNotFoundError(
            f"no metrics.json below {', '.join(map(str, folders))}: is this a sweep folder "
            "(logs/<task>/multiruns/<date>_<time>)?"
        )
    return runs


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value is not the same in every run (in first-seen order), seeds excluded."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.overrides))
    return [k for k in keys if k not in REPEAT_KEYS and len({run.overrides.get(k) for run in runs}) > 1]


def split_keys(runs: Sequence[Run], rows: Optional[Sequence[str]], columns: Optional[Sequence[str]]):
    """(row keys, column keys): given, or the varying keys with the regime-like one as the columns."""
    varying = varying_keys(runs)
    if columns is None:
        columns = next(([k] for k in DEFAULT_COLUMN_KEYS if k in varying), [])
    if rows is None:
        rows = [k for k in varying if k not in columns]
    return list(rows), list(columns)


def is_percentage(metric: str) -> bool:
    return "acc" in metric.split("/")[-1]


def short_metric(metric: str) -> str:
    """``val/acc_best`` -> ``val``, ``test/acc`` -> ``test``; other metrics keep their name."""
    return {"val/acc_best": "val", "val/acc": "val", "test/acc": "test"}.get(metric, metric)


@dataclass
class Cell:
    values: list[float]
    num_runs: int

    @property
    def mean(self) -> Optional[float]:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def format(self, percentage: bool, digits: int) -> str:
        """``97.58 ± 0.12 (3)`` for accuracies (in %), ``1.2e-07 ± 3e-08 (3)`` / ``44428 (3)`` otherwise;
        no ``±`` for a single run or identical values; ``(2/3)`` when a run gave no value."""
        if not self.values:
            return f"— (0/{self.num_runs})"
        scale = 100.0 if percentage else 1.0
        number = (lambda v: f"{v * scale:.{digits}f}") if percentage else (lambda v: f"{v:.4g}")
        text = number(self.mean)
        if self.std:
            text += f" ± {self.std * scale:.{digits}f}" if percentage else f" ± {self.std:.2g}"
        count = f"{len(self.values)}" if len(self.values) == self.num_runs else f"{len(self.values)}/{self.num_runs}"
        return f"{text} ({count})"


def metric_value(run: Run, metric: str) -> Optional[float]:
    value = run.metrics.get(metric) if run.completed else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def build_table(
    runs: Sequence[Run], row_keys: Sequence[str], column_keys: Sequence[str], metrics: Sequence[str]
) -> tuple[list[tuple], list[tuple], dict]:
    """(row labels, column labels, {(row, column, metric): Cell}) in first-seen order."""

    def label(run: Run, keys: Sequence[str]) -> tuple:
        return tuple(run.overrides.get(k, "—") for k in keys)

    rows = list(dict.fromkeys(label(r, row_keys) for r in runs))
    columns = list(dict.fromkeys(label(r, column_keys) for r in runs))
    cells = {}
    for row in rows:
        for column in columns:
            members = [r for r in runs if label(r, row_keys) == row and label(r, column_keys) == column]
            if not members:
                continue
            for metric in metrics:
                values = [v for v in (metric_value(r, metric) for r in members) if v is not None]
                cells[(row, column, metric)] = Cell(values, len(members))
    return rows, columns, cells


def short_key(key: str) -> str:
    return key.split("/")[-1].split(".")[-1]


def to_markdown(rows, columns, cells, row_keys, column_keys, metrics, digits: int = 2, title: str = "") -> str:
    """Rows = methods, columns = regimes × metrics; percentages for accuracies."""
    header = [short_key(k) for k in row_keys] or ["runs"]
    for column in columns:
        prefix = " ".join(f"{short_key(k)}={v}" for k, v in zip(column_keys, column))
        for metric in metrics:
            header.append(f"{prefix} {short_metric(metric)}".strip())
    lines = [f"### {title}\n" if title else "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells_text = list(row) or ["all"]
        for column in columns:
            for metric in metrics:
                cell = cells.get((row, column, metric))
                cells_text.append(cell.format(is_percentage(metric), digits) if cell else "")
        lines.append("| " + " | ".join(cells_text) + " |")
    note = (
        "\nmean ± sample std over seeds (runs with a value / runs); accuracies in %. "
        "Generated by scripts/results_table.py from metrics.json files."
    )
    return "\n".join(line for line in lines if line) + "\n" + note + "\n"


def write_csvs(out: Path, runs, rows, columns, cells, row_keys, column_keys, metrics) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results_csv, runs_csv = out / "results.csv", out / "runs.csv"
    with open(results_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*row_keys, *column_keys, "metric", "mean", "std", "n", "num_runs", "values"])
        for (row, column, metric), cell in cells.items():
            writer.writerow(
                [
                    *row,
                    *column,
                    metric,
                    cell.mean,
                    cell.std,
                    len(cell.values),
                    cell.num_runs,
                    " ".join(f"{v:.6g}" for v in cell.values),
                ]
            )
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    with open(runs_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_dir", "status", *keys, *metrics, "model/params", "train/images_per_s"])
        for r in runs:
            writer.writerow(
                [
                    str(r.path),
                    r.metrics.get("status"),
                    *(r.overrides.get(k, "") for k in keys),
                    *(r.metrics.get(m) for m in metrics),
                    r.metrics.get("model/params"),
                    r.metrics.get("train/images_per_s"),
                ]
            )
    return results_csv, runs_csv


def log_to_wandb(results_csv: Path, markdown: str, runs: Sequence[Run], project: str) -> None:
    """The table as a W&B Table (and the markdown as text) in a run of job type ``results_table``."""
    from runkit.wandb_logging import log_results_table

    log_results_table(results_csv, markdown, {r.metrics.get("run_group") for r in runs}, project)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (their job directories hold metrics.json)")
    parser.add_argument(
        "--rows",
        nargs="*",
        default=None,
        help="override keys that name the methods (default: every swept key except seed and the column keys)",
    )
    parser.add_argument(
        "--columns",
        nargs="*",
        default=None,
        help="override keys of the column groups "
        "(default: model.regime, else model.net.attention_window, when swept; none: --columns)",
    )
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first sweep folder)")
    parser.add_argument("--wandb", action="store_true", help="also log the table to W&B")
    parser.add_argument("--project", default="gevit")
    args = parser.parse_args(argv)

    runs = find_runs(args.sweeps)
    row_keys, column_keys = split_keys(runs, args.rows, args.columns)
    rows, columns, cells = build_table(runs, row_keys, column_keys, args.metrics)
    markdown = to_markdown(rows, columns, cells, row_keys, column_keys, args.metrics, args.digits, args.title)
    out = args.out or args.sweeps[0]
    (out).mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown)
    results_csv, _ = write_csvs(out, runs, rows, columns, cells, row_keys, column_keys, args.metrics)
    incomplete = [r for r in runs if not r.completed]
    print(markdown)
    print(f"{len(runs)} runs ({len(incomplete)} not completed) -> {out / 'results.md'}, {results_csv}", file=sys.stderr)
    for r in incomplete:
        print(f"  not completed: {r.path} ({r.metrics.get('status')})", file=sys.stderr)
    if args.wandb:
        log_to_wandb(results_csv, markdown, runs, args.project)
    return markdown


if __name__ == "__main__":
    main()
