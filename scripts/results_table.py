"""Turn the run directories of one or more sweeps into the write-ups' results table — never typed by hand.

    python -m scripts.results_table logs/posthoc_rotmnist/multiruns/2026-11-25_10-00-00
    python -m scripts.results_table SWEEP --rows model/aggregator --columns model.regime --metrics val/acc_best test/acc
    python -m scripts.results_table SWEEP_A SWEEP_B --out docs/tables/gevit --wandb

Every job directory below the given folders is one run: its ``metrics.json``, or, where a job failed before
writing one, its Hydra folder (``.hydra/``); jobs a sweep planned (its ``multirun.yaml``) that never got a
folder count too. What a run *is* comes from its Hydra overrides (``.hydra/overrides.yaml``, paths and logging
details left out), or from its ``config_resolved.yaml`` where there are none: the settings whose value differs
between runs, except ``seed``, name the methods (rows) and the regimes (columns; by default ``model.regime`` or
else ``model.net.attention_window`` when swept). Runs that differ only in their seed are repeats: each cell is
``mean ± std (n)`` over them (sample std; percentages for accuracies). A cell whose runs did not all complete
says so, ``(2/3)``, and the failed and missing runs are listed under the table.

Refused, with a message naming the runs: averaging runs whose settings differ (their resolved configs, paths
and logging left out) and counting one run twice (the same folder reached twice, or the same seed twice in a
cell, e.g. a run copied into two sweeps). ``--rows``/``--columns``/``--metrics`` naming nothing that exists
are warned about.

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

from runkit.naming import naming_overrides  # one definition of "what names a run"

DEFAULT_METRICS = ("val/acc_best", "test/acc")
DEFAULT_COLUMN_KEYS = ("model.regime", "model.net.attention_window")
REPEAT_KEYS = {"seed"}
# Settings that say nothing about what a run computes (besides paths: any value with a slash).
BOOKKEEPING_KEYS = (
    "hydra.",
    "paths.",
    "logger",
    "task_name",
    "print_config",
    "tags",
    "figure.",
    "memory_check",
    "auto_resume",
    "trainer.enable_progress_bar",
)
NO_METRICS = "no metrics.json (failed before the run started, or still running)"
NEVER_STARTED = "missing: planned by the sweep, never started (no job folder)"


class TableError(ValueError):
    """The runs cannot be tabled honestly as asked; the message names them."""


@dataclass
class Run:
    """One job: its directory, its overrides (key -> value), its metrics.json and its settings (the resolved
    config, flattened; None when it has no config_resolved.yaml)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict = field(default_factory=dict)
    settings: Optional[dict[str, str]] = None
    has_overrides: bool = True  # False: no .hydra/overrides.yaml (the run is then named by its settings)

    @property
    def completed(self) -> bool:
        return self.metrics.get("status") == "completed"

    @property
    def seed(self) -> Optional[str]:
        if self.settings is not None and "seed" in self.settings:
            return self.settings["seed"]
        return self.overrides.get("seed", None if self.metrics.get("seed") is None else str(self.metrics["seed"]))


def natural_key(path: Path) -> list:
    """Sort ``.../fixed/10`` after ``.../fixed/9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def parse_overrides(lines: Sequence[str]) -> dict[str, str]:
    parsed = {}
    for override in naming_overrides([str(line) for line in lines]):
        key, _, value = override.partition("=")
        parsed[key] = value
    return parsed


def flatten(node, prefix: str = "") -> dict[str, str]:
    """``{"model.net.depth": "1", ...}`` of a nested config (lists kept whole, as their YAML flow text)."""
    if isinstance(node, dict):
        flat: dict[str, str] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: yaml.safe_dump(node, default_flow_style=True).strip().removesuffix("...").strip()}


def run_settings(run_dir: Path) -> Optional[dict[str, str]]:
    """What the run computes: its resolved config, flattened, without seeds, paths, logging and bookkeeping."""
    config_file = run_dir / "config_resolved.yaml"
    if not config_file.is_file():
        return None
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{config_file} is not valid YAML ({err})") from err
    return {
        key: value
        for key, value in flatten(config).items()
        if not key.startswith(BOOKKEEPING_KEYS) and "/" not in value and "\\" not in value
    }


def read_overrides(run_dir: Path) -> Optional[dict[str, str]]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return None
    return parse_overrides(yaml.safe_load(overrides_file.read_text()) or [])


def planned_jobs(sweep_file: Path) -> Optional[list[dict[str, str]]]:
    """The jobs a grid sweep planned (from its ``multirun.yaml``: Hydra's own expansion of the overrides);
    None where they cannot be told (another sweeper, or sweep syntax that needs the config, such as glob)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hydra_cfg = yaml.safe_load(sweep_file.read_text())["hydra"]
        if not str(hydra_cfg["sweeper"]["_target_"]).endswith("BasicSweeper"):
            return None
        parsed = OverridesParser.create().parse_overrides([str(o) for o in hydra_cfg["overrides"]["task"]])
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # not Hydra's file, or a sweep Hydra cannot expand without the config
        return None
    return [parse_overrides(job) for batch in batches for job in batch]


def find_runs(folders: Sequence[Path]) -> list[Run]:
    """Every job below ``folders`` (submitit's folders skipped): the directories with a ``metrics.json`` or a
    ``.hydra/`` folder, plus the jobs a ``multirun.yaml`` planned that have no directory."""
    runs: list[Run] = []
    seen: dict[Path, Path] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a directory (expected a sweep folder under logs/)")
        job_dirs = {p.parent for p in folder.rglob("metrics.json")} | {
            p.parent.parent for p in folder.rglob(".hydra/overrides.yaml")
        }
        found_here = []
        for run_dir in sorted(job_dirs, key=natural_key):
            if any(part.startswith(".") for part in run_dir.relative_to(folder).parts):
                continue
            real = run_dir.resolve()
            if real in seen:
                raise TableError(
                    f"{run_dir} is the run {seen[real]} again (the folders given overlap, or one was given twice): "
                    "pass each sweep folder once"
                )
            seen[real] = run_dir
            metrics_file = run_dir / "metrics.json"
            metrics = {"status": NO_METRICS}
            if metrics_file.is_file():
                try:
                    metrics = json.loads(metrics_file.read_text())
                except json.JSONDecodeError as err:
                    raise ValueError(f"{metrics_file} is not valid JSON ({err}); delete it or rerun the job") from err
            overrides = read_overrides(run_dir)
            found_here.append(
                Run(run_dir, overrides or {}, metrics, run_settings(run_dir), has_overrides=overrides is not None)
            )
        for sweep_file in sorted(folder.rglob("multirun.yaml"), key=natural_key):
            if any(part.startswith(".") for part in sweep_file.parent.relative_to(folder).parts):
                continue
            below = [r for r in found_here if sweep_file.parent in r.path.parents]
            for number, job in enumerate(planned_jobs(sweep_file) or []):
                match = next((r for r in below if r.has_overrides and r.overrides == job), None)
                if match is not None:
                    below.remove(match)  # a sweep that plans the same job twice needs two folders
                    continue
                found_here.append(Run(sweep_file.parent / f"#{number}", job, {"status": NEVER_STARTED}))
        runs.extend(found_here)
    if not runs:
        raise FileNotFoundError(
            f"no metrics.json below {', '.join(map(str, folders))}: is this a sweep folder "
            "(logs/<task>/multiruns/<date>_<time>)?"
        )
    if not all(r.has_overrides for r in runs):
        label_by_settings(runs)
    return runs


def label_by_settings(runs: list[Run]) -> None:
    """Runs without Hydra overrides (e.g. launched from Python): name every run by its resolved settings
    instead, so that runs of different settings never share a row."""
    unknown = [r for r in runs if r.settings is None]
    if unknown:
        raise TableError(
            f"{unknown[0].path} has neither .hydra/overrides.yaml nor config_resolved.yaml: its settings cannot be "
            "told, so it cannot be averaged with other runs (table it on its own, or remove it)"
        )
    for run in runs:
        run.overrides = dict(run.settings)


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


def check_cell(members: Sequence[Run], label: str) -> None:
    """The runs of one cell must be repeats: the same settings, each seed once."""
    by_seed: dict[Optional[str], Run] = {}
    for run in members:
        if run.seed in by_seed and run.seed is not None:
            raise TableError(
                f"cell {label} holds seed {run.seed} twice: {by_seed[run.seed].path} and {run.path} (the same run in "
                "two sweeps, or a rerun): pass each run once"
            )
        by_seed[run.seed] = run
    known = [r for r in members if r.settings is not None]
    for run in known[1:]:
        first = known[0]
        differing = sorted(
            k
            for k in set(first.settings) | set(run.settings)
            if k not in REPEAT_KEYS and first.settings.get(k) != run.settings.get(k)
        )
        if differing:
            shown = ", ".join(f"{k}={first.settings.get(k)} vs {run.settings.get(k)}" for k in differing[:4])
            more = f" (and {len(differing) - 4} more)" if len(differing) > 4 else ""
            raise TableError(
                f"refusing to average runs of different settings in cell {label}: {shown}{more} "
                f"({first.path} vs {run.path}); name the key with --rows/--columns, or table them separately"
            )


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
            check_cell(members, "/".join(map(str, (*row, *column))) or "all")
            for metric in metrics:
                values = [v for v in (metric_value(r, metric) for r in members) if v is not None]
                cells[(row, column, metric)] = Cell(values, len(members))
    return rows, columns, cells


def unmatched_names(runs: Sequence[Run], keys: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """Warnings for --rows/--columns keys no run has and metrics no run reports."""
    warnings = [
        f"--rows/--columns {key}: no run has this setting (known: {', '.join(sorted(varying_keys(runs))) or 'none'})"
        for key in keys
        if not any(key in r.overrides for r in runs)
    ]
    warnings += [
        f"--metrics {metric}: no run reports it (its cells read — (0/n))"
        for metric in metrics
        if not any(metric in r.metrics for r in runs)
    ]
    return warnings


def short_key(key: str) -> str:
    return key.split("/")[-1].split(".")[-1]


def to_markdown(
    rows, columns, cells, row_keys, column_keys, metrics, digits: int = 2, title: str = "", runs: Sequence[Run] = ()
) -> str:
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
    incomplete = [r for r in runs if not r.completed]
    if incomplete:
        note += f"\n\nNot completed: {len(incomplete)} of {len(runs)} runs.\n\n" + "\n".join(
            f"- `{r.path}`: {r.metrics.get('status')}" for r in incomplete
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

    try:
        runs = find_runs(args.sweeps)
        row_keys, column_keys = split_keys(runs, args.rows, args.columns)
        for warning in unmatched_names(runs, [*(args.rows or []), *(args.columns or [])], args.metrics):
            print(f"warning: {warning}", file=sys.stderr)
        rows, columns, cells = build_table(runs, row_keys, column_keys, args.metrics)
    except TableError as err:
        if __name__ != "__main__":
            raise
        raise SystemExit(f"results_table: {err}") from None
    markdown = to_markdown(rows, columns, cells, row_keys, column_keys, args.metrics, args.digits, args.title, runs)
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
