"""The leaderboard of multirun/leaderboard.sh: one row per model family from the metrics.json of its runs.

    python scripts/leaderboard.py SWEEP_DIR [--out docs/leaderboard.md] [--figure docs/leaderboard.png]

SWEEP_DIR holds one folder per family (its name is the row), each with one job folder per seed holding the
metrics.json that train.py writes. Only completed runs count; a family's cell says how many completed out of
the planned ``--seeds`` (or of the runs present), e.g. (3/3), or (1/3) for a table still being filled.
Columns: test accuracy mean ± std over seeds, rot90 invariance error (test/invariance_error_rot90, mean),
accuracy at 45 degrees (from rotation_robustness), parameters (model/params), train images/s
(train/images_per_s, mean) and wall time per run (duration_s, mean). The figure draws each family's
accuracy-vs-angle curve averaged over its seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from any checkout or folder
    sys.path.insert(0, str(REPO))


def collect(sweep_dir: Path) -> dict[str, list[dict]]:
    """``{family: [metrics of each run]}`` in the order the families were written (folder mtime)."""
    families: dict[str, list[dict]] = {}
    folders = sorted((p for p in sweep_dir.iterdir() if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
    for folder in folders:
        runs = []
        for path in sorted(folder.rglob("metrics.json")):
            try:
                runs.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}: not a readable metrics.json ({err})") from err
        if runs:
            families[folder.name] = runs
    if not families:
        raise ValueError(f"{sweep_dir}: no <family>/<run>/metrics.json files")
    return families


def _mean(values: list) -> Optional[float]:
    values = [float(v) for v in values if v is not None]
    return statistics.fmean(values) if values else None


def accuracy_at(run: dict, angle: float) -> Optional[float]:
    curve = run.get("rotation_robustness") or {}
    for a, acc in zip(curve.get("angles", []), curve.get("accuracy", [])):
        if abs(float(a) - angle) < 1e-6:
            return float(acc)
    return None


def summarise(runs: list[dict], seeds: int = 0) -> dict:
    """One row's numbers; ``runs`` reads completed/planned (planned: ``seeds``, or the runs present if more)."""
    done = [r for r in runs if r.get("status") == "completed" and r.get("test/acc") is not None]
    accs = [100 * float(r["test/acc"]) for r in done]
    return {
        "runs": f"{len(done)}/{max(seeds, len(runs))}",
        "acc_mean": statistics.fmean(accs) if accs else None,
        "acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "invariance_error": _mean([r.get("test/invariance_error_rot90") for r in done]),
        "acc_45": _mean([None if accuracy_at(r, 45.0) is None else 100 * accuracy_at(r, 45.0) for r in done]),
        "params": next((r.get("model/params") for r in done if r.get("model/params") is not None), None),
        "images_per_s": _mean([r.get("train/images_per_s") for r in done]),
        "wall_s": _mean([r.get("duration_s") for r in done]),
    }


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def markdown(
    families: dict[str, list[dict]],
    command: str,
    machine: str,
    budgets: str = "",
    figure: Optional[str] = None,
    seeds: int = 0,
) -> str:
    lines = [
        "# Leaderboard on the embedded RotMNIST-mini",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        "Test accuracy on the 3,000 rotated held-out digits (checkpoint selected on validation, tested once), "
        "mean ± std over seeds (no ± where one run completed); rot90 invariance error: relative logit change under a 90-degree rotation; "
        "wall time: whole run (train + test + robustness curve).",
        "",
    ]
    if budgets.strip():
        lines += ["Budgets (from the script header):", "", "```", budgets.strip(), "```", ""]
    lines += [
        "| family | runs | test acc (%) | rot90 inv. error | acc at 45° (%) | params | train images/s | wall time (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in families.items():
        s = summarise(runs, seeds)
        acc = "–" if s["acc_mean"] is None else f"{s['acc_mean']:.2f}"
        if s["acc_std"] is not None:  # a spread only where there are two runs or more
            acc += f" ± {s['acc_std']:.2f}"
        wall = None if s["wall_s"] is None else s["wall_s"] / 60
        lines.append(
            f"| {name} | ({s['runs']}) | {acc} | {_fmt(s['invariance_error'], '.1e')} | "
            f"{_fmt(s['acc_45'], '.1f')} | {_fmt(s['params'], ',')} | {_fmt(s['images_per_s'], '.1f')} | "
            f"{_fmt(wall, '.1f')} |"
        )
    if figure:
        lines += ["", f"![accuracy vs angle]({figure})"]
    return "\n".join(lines) + "\n"


def mean_curves(families: dict[str, list[dict]]) -> dict[str, dict]:
    curves = {}
    for name, runs in families.items():
        done = [
            r["rotation_robustness"] for r in runs if r.get("status") == "completed" and r.get("rotation_robustness")
        ]
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


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default: SWEEP_DIR/results.md)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG (default: next to --out, leaderboard.png)")
    parser.add_argument("--command", default="bash multirun/leaderboard.sh")
    parser.add_argument("--machine", default=None, help="default: described from this machine")
    parser.add_argument("--budgets", default="", help="text block quoted under the header")
    parser.add_argument(
        "--seeds", type=int, default=0, help="runs planned per family (the 'runs' column: done/planned)"
    )
    parser.add_argument(
        "--families", default="", help="comma list of the planned families: one not run yet gets a row (0/planned)"
    )
    args = parser.parse_args(argv)

    families = collect(args.sweep_dir)
    for name in filter(None, args.families.split(",")):
        families.setdefault(name, [])  # planned, not run yet: a row of dashes
    out = args.out or args.sweep_dir / "results.md"
    figure = args.figure or out.parent / "leaderboard.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    curves = mean_curves(families)
    if curves:
        from runkit.plots import plot_rotation_robustness

        plot_rotation_robustness(curves, figure, title="Accuracy under rotation, every family (mean over seeds)")
    relative = os.path.relpath(figure, out.parent) if curves else None
    text = markdown(families, args.command, args.machine or machine_description(), args.budgets, relative, args.seeds)
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
