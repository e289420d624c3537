"""The leaderboard of multirun/leaderboard.sh: one row per model family from the metrics.json of its runs.

    python -m scripts.leaderboard SWEEP_DIR [--out docs/leaderboard.md] [--figure docs/leaderboard.png]
    python -m scripts.leaderboard docs/leaderboard_runs.json --out ...   # the same table from its run records
    python -m scripts.leaderboard --check-run RUN_DIR OVERRIDE...   # multirun/leaderboard.sh: may RUN_DIR be reused?

SWEEP_DIR holds one folder per family (its name is the row), each with one job folder per seed holding the
metrics.json that train.py writes. Only completed runs count, and debug runs (fast_dev_run, limit_*_batches,
overfit_batches) never do; a family's cell says how many completed out of the planned ``--seeds`` (or of the
runs present), e.g. (3/3), or (1/3) for a table still being filled. Columns: the budget each family's runs
actually had (epochs trained; the data sizes are in the header, or per row where they differ), test accuracy
mean ± std over seeds, rot90 invariance error (test/invariance_error_rot90, mean), accuracy at 45 degrees (from
rotation_robustness), parameters (model/params), train images/s (train/images_per_s, mean) and wall time per
run (duration_s, mean). Runs of one family with different budgets are refused, not averaged. The figure draws
each family's accuracy-vs-angle curve averaged over its seeds; the learning-curve figure (``--curves-figure``)
its validation accuracy against epoch and against wall time (``time/elapsed_s``), averaged over its seeds
epoch by epoch, from each run's ``csv/version_*/metrics.csv`` (a resumed run's versions merged, later ones
winning).

``--runs-out FILE`` also writes every run's numbers and learning curve to one JSON file (the table's raw data,
small enough to commit: docs/leaderboard_runs.json); given as SWEEP_DIR, that file rebuilds the table and both
figures without the run folders.

``--check-run`` compares a run folder with the overrides a leaderboard run would now get (its
``.hydra/overrides.yaml``, so the budget and the debug state included): prints ``new`` (nothing there),
``keep`` (completed with these settings), ``resume`` (started with these settings) or, for a run of other
settings, says which and exits 1, so a table never mixes budgets.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

DEBUG_KEYS = ("fast_dev_run", "limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches")


def debug_state(trainer: dict) -> Optional[str]:
    """``fast_dev_run=True`` (or another shortened schedule) of a run's trainer config; None for a real run.
    (Lightning reads an int limit as a number of batches and a float as a fraction: ``1`` is one batch.)"""
    for key in DEBUG_KEYS:
        value = trainer.get(key)
        whole = value is None or value is False or (isinstance(value, float) and value == 1.0)
        if whole or (key in ("fast_dev_run", "overfit_batches") and value == 0):
            continue
        return f"{key}={value}"
    return None


def budget_of(run_dir: Path, metrics: dict) -> dict:
    """What a run was given: data sizes, epochs, the rotation curve's sample budget and its debug state."""
    config_file = run_dir / "config_resolved.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    trainer = (config or {}).get("trainer") or {}
    curve = ((config or {}).get("callbacks") or {}).get("rotation_robustness") or {}
    sizes = metrics.get("data_sizes") or {}
    return {
        "data": tuple(sizes.get(split) for split in ("train", "val", "test")) if sizes else None,
        "epochs": trainer.get("max_epochs"),
        "curve_samples": curve.get("max_samples"),
        "debug": debug_state(trainer),
    }


def collect(sweep_dir: Path) -> dict[str, list[dict]]:
    """``{family: [metrics of each run, with its "budget" and "run_dir"]}`` in the order the families were
    written (folder mtime); from a run-records file (``--runs-out``) in the order it lists them."""
    if sweep_dir.is_file():
        return load_runs(read_runs_file(sweep_dir))
    families: dict[str, list[dict]] = {}
    folders = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
    for folder in folders:
        runs = []
        for path in sorted(folder.rglob("metrics.json")):
            try:
                metrics = json.loads(path.read_text())
                metrics.update(budget=budget_of(path.parent, metrics), run_dir=str(path.parent))
            except (OSError, json.JSONDecodeError, yaml.YAMLError) as err:
                raise ValueError(f"{path}: not a readable run ({err})") from err
            runs.append(metrics)
        if runs:
            families[folder.name] = runs
    if not families:
        raise ValueError(f"{sweep_dir}: no <family>/<run>/metrics.json files")
    return families


def counted(runs: list[dict]) -> list[dict]:
    """The runs a row reports: completed, with a test accuracy, not debug runs. Their budgets must agree."""
    done = [
        r
        for r in runs
        if r.get("status") == "completed" and r.get("test/acc") is not None and not (r.get("budget") or {}).get("debug")
    ]
    budgets = {(r["budget"]["data"], r["budget"]["epochs"]) for r in done if r.get("budget")}
    if len(budgets) > 1:
        shown = "; ".join(f"{r['run_dir']}: data {r['budget']['data']}, {r['budget']['epochs']} epochs" for r in done)
        raise ValueError(f"refusing to average runs of different budgets in one row: {shown}")
    return done


def _mean(values: list) -> Optional[float]:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def accuracy_at(run: dict, angle: float) -> Optional[float]:
    curve = run.get("rotation_robustness") or {}
    for a, acc in zip(curve.get("angles", []), curve.get("accuracy", [])):
        if abs(float(a) - angle) < 1e-6:
            return float(acc)
    return None


def epochs_of(run: dict) -> str:
    """The epochs a run trained: ``0`` for a model with nothing to train (a zero-shot wrapper)."""
    if run.get("epochs_trained") is not None:
        return str(run["epochs_trained"])
    return "0" if run.get("model/params_trainable") == 0 else "–"


def summarise(runs: list[dict], seeds: int = 0) -> dict:
    """One row's numbers; ``runs`` reads completed/planned (planned: ``seeds``, or the runs present if more),
    plus the debug runs left out."""
    done = counted(runs)
    accs = [100 * float(r["test/acc"]) for r in done]
    debug = sorted({r["budget"]["debug"] for r in runs if (r.get("budget") or {}).get("debug")})
    trained = sorted({epochs_of(r) for r in done})
    return {
        "runs": f"{len(done)}/{max(seeds, len(runs))}"
        + (f", debug runs left out: {', '.join(debug)}" if debug else ""),
        "epochs": ", ".join(trained) if done else None,
        "data": done[0]["budget"]["data"] if done and done[0].get("budget") else None,
        "acc_mean": statistics.fmean(accs) if accs else None,
        "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "invariance_error": _mean([r.get("test/invariance_error_rot90") for r in done]),
        "acc_45": _mean([None if accuracy_at(r, 45.0) is None else 100 * accuracy_at(r, 45.0) for r in done]),
        "params": next((r.get("model/params") for r in done if r.get("model/params") is not None), None),
        "images_per_s": _mean([r.get("train/images_per_s") for r in done]),
        "wall_s": _mean([wall_time(r) for r in done]),
    }


def wall_time(run: dict) -> Optional[float]:
    """A run's whole wall time: ``run_duration_s`` (every segment of a resumed run); for a run recorded before
    that existed, its last segment's ``duration_s``, at least the training time summed over segments."""
    if run.get("run_duration_s") is not None:
        return run["run_duration_s"]
    known = [t for t in (run.get("duration_s"), run.get("time/elapsed_s")) if t is not None]
    return max(known) if known else None


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _sizes(data: Optional[tuple]) -> str:
    return "–" if not data else " / ".join("?" if n is None else f"{n:,}" for n in data)


def markdown(
    families: dict[str, list[dict]],
    command: str,
    machine: str,
    budgets: str = "",
    figure: Optional[str] = None,
    seeds: int = 0,
    curves_figure: Optional[str] = None,
    runs_file: Optional[str] = None,
) -> str:
    rows = {name: summarise(runs, seeds) for name, runs in families.items()}
    sizes = {s["data"] for s in rows.values() if s["data"]}
    samples = {r["budget"]["curve_samples"] for runs in families.values() for r in counted(runs)}
    if len(sizes) == 1:
        (data,) = sizes
        data_text = (
            f"Data: {_sizes(data)} train / val / test images of the embedded RotMNIST-mini in every row; "
            f"test accuracy on the {data[2]:,} held-out test digits"
        )
    else:
        data_text = (
            "Data sizes differ between rows (train / val / test in each row); test accuracy on each row's test digits"
        )
    curve_text = ", ".join(f"{n:,}" for n in sorted(samples, key=str) if n is not None) or "–"
    lines = [
        "# Leaderboard on the embedded RotMNIST-mini",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        f"{data_text} (rotated; the upright_* rows train and validate on upright digits), checkpoint selected "
        "on validation, tested once; mean ± std over seeds (no ± where one run completed); epochs: as trained by "
        "the runs counted (0: nothing trained); rot90 invariance error: relative logit change under a 90-degree "
        f"rotation; accuracy at 45°: on {curve_text} test images; wall time: whole run (train + test + robustness curve).",
        "",
    ]
    if runs_file:
        lines += [
            f"Every run's numbers and learning curve: [`{Path(runs_file).name}`]({runs_file}) "
            f"(`python -m scripts.leaderboard <that file> --out <table.md>` rebuilds this table and its figures).",
            "",
        ]
    if budgets.strip():
        lines += ["Notes:", "", "```", budgets.strip(), "```", ""]
    per_row_data = len(sizes) > 1
    header = ["family", "runs", "epochs", *(["data"] if per_row_data else []), "test acc (%)", "rot90 inv. error"]
    header += ["acc at 45° (%)", "params", "train images/s", "wall time (min)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in rows.items():
        acc = "–" if s["acc_mean"] is None else f"{s['acc_mean']:.2f}"
        if s["acc_std"] is not None:  # a spread only where there are two runs or more
            acc += f" ± {s['acc_std']:.2f}"
        wall = None if s["wall_s"] is None else s["wall_s"] / 60
        cells = [name, f"({s['runs']})", s["epochs"] or "–", *([_sizes(s["data"])] if per_row_data else [])]
        cells += [acc, _fmt(s["invariance_error"], ".1e"), _fmt(s["acc_45"], ".1f"), _fmt(s["params"], ",")]
        cells += [_fmt(s["images_per_s"], ".1f"), _fmt(wall, ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    if curves_figure:
        lines += ["", f"![validation accuracy vs epoch and vs wall time]({curves_figure})"]
    if figure:
        lines += ["", f"![accuracy vs angle]({figure})"]
    return "\n".join(lines) + "\n"


def mean_curves(families: dict[str, list[dict]]) -> dict[str, dict]:
    curves = {}
    for name, runs in families.items():
        done = [r["rotation_robustness"] for r in counted(runs) if r.get("rotation_robustness")]
        if not done:
            continue
        angles = done[0]["angles"]
        same = [c for c in done if c["angles"] == angles]
        n = len(same)
        curves[f"{name} ({summarise(runs)['acc_mean']:.1f} %)"] = {
            "angles": angles,
            "accuracy": [sum(c["accuracy"][i] for c in same) / n for i in range(len(angles))],
        }
    return curves


def learning_curve(run_dir: Path) -> dict[int, dict]:
    """``{epoch: {"val_acc": ..., "elapsed_s": ...}}`` of one run from its CSV logs (Lightning's CSVLogger
    writes validation and training rows of an epoch separately; a resumed run adds a version)."""
    epochs: dict[int, dict] = {}
    versions = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    for path in versions:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                entry = epochs.setdefault(int(float(row["epoch"])), {"val_acc": None, "elapsed_s": None})
                for key, column in (("val_acc", "val/acc"), ("elapsed_s", "time/elapsed_s")):
                    if row.get(column):
                        entry[key] = float(row[column])
    return {e: v for e, v in sorted(epochs.items()) if v["val_acc"] is not None}


def run_learning_curve(run: dict) -> dict[int, dict]:
    """A run's learning curve: from its run record when it came from one, else from its CSV logs."""
    if "learning_curve" in run:
        return {int(e): {"val_acc": acc, "elapsed_s": t} for e, acc, t in run["learning_curve"]}
    return learning_curve(Path(run["run_dir"]))


RUNS_FORMAT = "gevit leaderboard runs v1"


def _inside_sweep(value, root: Path):
    """``value`` with every absolute path inside the (resolved) sweep folder ``root`` (a run's output_dir,
    checkpoints, config) written relative to it: the records name no machine's folders."""
    if isinstance(value, dict):
        return {k: _inside_sweep(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_inside_sweep(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and Path(value).resolve().is_relative_to(root):
        return Path(value).resolve().relative_to(root).as_posix()
    return value


def export_runs(families: dict[str, list[dict]], path: Path, sweep_dir: Path, header: dict) -> None:
    """Every run's metrics (with its budget) and learning curve, ``run`` naming its folder relative to the
    sweep; ``header`` (command, machine, budgets) is what the table states about how they were measured."""
    records = {}
    for name, runs in families.items():
        records[name] = []
        for run in runs:
            record = _inside_sweep({k: v for k, v in run.items() if k != "run_dir"}, sweep_dir.resolve())
            record.setdefault("run", os.path.relpath(run["run_dir"], sweep_dir))
            curve = run_learning_curve(run)
            record["learning_curve"] = [[e, v["val_acc"], v["elapsed_s"]] for e, v in curve.items()]
            records[name].append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": RUNS_FORMAT, **header, "families": records}, indent=1) + "\n")


def read_runs_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable run-records file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != RUNS_FORMAT or not data.get("families"):
        raise ValueError(f"{path}: not a run-records file of scripts.leaderboard --runs-out ({RUNS_FORMAT!r})")
    return data


def load_runs(records: dict) -> dict[str, list[dict]]:
    """The families of a read run-records file, each run with the ``run_dir`` (its recorded name) the table reads."""
    families = {name: [dict(r, run_dir=r["run"]) for r in runs] for name, runs in records["families"].items()}
    for run in (r for runs in families.values() for r in runs):
        if isinstance((run.get("budget") or {}).get("data"), list):  # JSON has no tuples; budgets compare as tuples
            run["budget"]["data"] = tuple(run["budget"]["data"])
    return families


def mean_learning_curves(families: dict[str, list[dict]]) -> dict[str, dict]:
    """Per trained family, validation accuracy and elapsed time averaged over its counted runs at each epoch
    that all of them reached (``elapsed_s`` None where a run did not log it); zero-shot rows have none."""
    curves = {}
    for name, runs in families.items():
        per_run = [run_learning_curve(r) for r in counted(runs) if epochs_of(r) != "0"]
        per_run = [c for c in per_run if c]
        if not per_run:
            continue
        shared = sorted(set.intersection(*(set(c) for c in per_run)))
        if not shared:
            continue
        times = [[c[e]["elapsed_s"] for c in per_run] for e in shared]
        curves[f"{name} ({summarise(runs)['acc_mean']:.1f} %)"] = {
            "epoch": [e + 1 for e in shared],  # epochs completed
            "val_acc": [statistics.fmean(c[e]["val_acc"] for c in per_run) for e in shared],
            "elapsed_s": [None if None in t else statistics.fmean(t) for t in times],
        }
    return curves


def machine_description() -> str:
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        device, torch_version = "unknown", "not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {device}, "
        f"torch {torch_version}, load average {load:.1f} when the table was written"
    )


def check_run(run_dir: Path, overrides: Sequence[str], ignore_suffix: str = "") -> tuple[str, str]:
    """(state, message) of a leaderboard run folder against the overrides it would now be run with: ``new``,
    ``keep`` (completed with exactly these overrides), ``resume`` (started with them) or ``other`` (a run of
    other settings: another budget, a debug run, ...; the message names the differences). Overrides whose key
    ends in ``ignore_suffix`` are not compared (the stage-1 checkpoint of a post-hoc run not trained yet)."""
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        return (
            ("other", f"{run_dir} holds files but no .hydra/overrides.yaml")
            if (run_dir / "metrics.json").is_file()
            else ("new", "")
        )

    def keyed(items: Sequence[str]) -> dict[str, str]:
        pairs = (str(o).lstrip("+~").partition("=")[::2] for o in items)
        # hydra.* overrides are not recorded in overrides.yaml (they say where, not what)
        return {
            k: v for k, v in pairs if not k.startswith("hydra") and not (ignore_suffix and k.endswith(ignore_suffix))
        }

    before, now = keyed(yaml.safe_load(recorded.read_text()) or []), keyed(overrides)
    differing = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differing:
        shown = ", ".join(f"{k}: {before.get(k, '(not set)')} there, {now.get(k, '(not set)')} now" for k in differing)
        return "other", f"{run_dir} holds a run of other settings ({shown})"
    metrics = run_dir / "metrics.json"
    completed = metrics.is_file() and json.loads(metrics.read_text()).get("status") == "completed"
    return ("keep", "") if completed else ("resume", "")


def main(argv: Optional[Sequence[str]] = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--check-run"]:
        ignore = argv[2].split("=", 1)[1] if len(argv) > 2 and argv[2].startswith("--ignore-suffix=") else ""
        state, message = check_run(Path(argv[1]), argv[3:] if ignore else argv[2:], ignore)
        if state == "other":
            raise SystemExit(f"leaderboard: {message}")
        print(state)
        return state
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="the table's folder, or a run-records file (--runs-out)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: SWEEP_DIR/results.md)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG (default: next to --out, leaderboard.png)")
    parser.add_argument(
        "--curves-figure", type=Path, default=None, help="PNG (default: next to --out, leaderboard_curves.png)"
    )
    parser.add_argument("--command", default=None, help="default: bash multirun/leaderboard.sh (or the records')")
    parser.add_argument("--machine", default=None, help="default: described from this machine (or the records')")
    parser.add_argument("--budgets", default=None, help="text block quoted under the header (notes)")
    parser.add_argument(
        "--seeds", type=int, default=0, help="runs planned per family (the 'runs' column: done/planned)"
    )
    parser.add_argument(
        "--families",
        default="",
        help="comma list of the planned families, in the order of the rows: one not run yet gets a row (0/planned)",
    )
    parser.add_argument("--runs-out", type=Path, default=None, help="also write the run records (JSON) here")
    args = parser.parse_args(argv)

    recorded = read_runs_file(args.sweep_dir) if args.sweep_dir.is_file() else {}
    families = load_runs(recorded) if recorded else collect(args.sweep_dir)
    header = {
        "command": args.command or recorded.get("command") or "bash multirun/leaderboard.sh",
        "machine": args.machine or recorded.get("machine") or machine_description(),
        "budgets": args.budgets if args.budgets is not None else recorded.get("budgets", ""),
        "seeds": args.seeds or recorded.get("seeds", 0),
    }
    planned = list(filter(None, args.families.split(",")))
    # rows in the planned order (a planned family not run yet: a row of dashes), then any other family found
    families = {name: families.get(name, []) for name in planned} | families
    if args.runs_out:
        export_runs({name: runs for name, runs in families.items() if runs}, args.runs_out, args.sweep_dir, header)
    runs_file = args.runs_out or (args.sweep_dir if recorded else None)
    out = args.out or (args.sweep_dir.parent if args.sweep_dir.is_file() else args.sweep_dir) / "results.md"
    figure = args.figure or out.parent / "leaderboard.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    curves = mean_curves(families)
    if curves:
        from runkit.plots import plot_rotation_robustness

        plot_rotation_robustness(curves, figure, title="Accuracy under rotation, every family (mean over seeds)")
    relative = os.path.relpath(figure, out.parent) if curves else None
    learning = mean_learning_curves(families)
    learning_figure = args.curves_figure or out.parent / "leaderboard_curves.png"
    if learning:
        from runkit.plots import plot_learning_curves

        plot_learning_curves(
            learning,
            learning_figure,
            title="Validation accuracy while training, every trained family (mean over seeds)",
            looks=list(curves),  # each family drawn as in the accuracy-vs-angle figure
        )
    text = markdown(
        families,
        header["command"],
        header["machine"],
        header["budgets"],
        relative,
        header["seeds"],
        os.path.relpath(learning_figure, out.parent) if learning else None,
        os.path.relpath(runs_file, out.parent) if runs_file else None,
    )
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
