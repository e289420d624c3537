"""Figures from trained checkpoints: rotation GIF, GE-ViT latents, attention maps, post-hoc view weights,
accuracy under rotation of several runs.

    python -m scripts.visualize rotation-gif --ckpt ViT=RUN_A/checkpoints/last.ckpt --ckpt GE-ViT=RUN_B/checkpoints/last.ckpt
    python -m scripts.visualize latents --gevit-ckpt RUN_B/checkpoints/last.ckpt
    python -m scripts.visualize attention --gevit-ckpt RUN_B/checkpoints/last.ckpt --vit-ckpt RUN_A/checkpoints/last.ckpt
    python -m scripts.visualize view-weights --posthoc-ckpt RUN_C/checkpoints/last.ckpt
    python -m scripts.visualize robustness --runs RUN_A "GE-ViT p4=RUN_B"
    python -m scripts.visualize all --vit-ckpt ... --gevit-ckpt ... --posthoc-ckpt ... [--runs ...] [--wandb]

Checkpoints are rebuilt from the model config stored in them (runkit.checkpoint_loading.load_run). Images are
digits of the validation split of the embedded RotMNIST-mini set, upright; the test split is never used.
Files go to --out (default logs/visualizations/<timestamp>) with a summary.json of every number shown;
--wandb also logs them to W&B (project gevit, job_type visualize; offline without credentials). What each
figure shows: docs/visualizations.md.

This file is the command line only: one subcommand per figure (each a ``draw_*`` function below), the
figures in scripts/figures/ (one module each), the maths in gevit/analysis/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from gevit.analysis import angles_every
from runkit.wandb_logging import log_files
from scripts.figures import (
    LoadedModel,
    check_digit_shape,
    load_model,
    plot_gevit_attention,
    plot_gevit_latents,
    plot_robustness_comparison,
    plot_rotation_confidence,
    plot_view_weights,
    plot_vit_attention,
    rotation_predictions,
    run_label,
    validation_digits,
    write_rotation_gif,
)
from scripts.figures.robustness import read_robustness_curve
from scripts.figures.rotation_gif import rotation_summary


class MissingInput(SystemExit):
    """A subcommand called without the inputs it needs (exits with the message)."""


def labelled(value: str) -> tuple[Optional[str], str]:
    """``LABEL=PATH`` -> (LABEL, PATH); a plain ``PATH`` -> (None, PATH), also when the path itself holds
    an ``=`` (Lightning's ``epoch=1-step=94.ckpt``)."""
    label, sep, path = value.partition("=")
    if not sep or not label or Path(value).exists():
        return None, value
    return label, path


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "model"


@dataclass
class Session:
    """One command's inputs and outputs: the parsed arguments, the digit drawn, the checkpoints loaded once
    each, and the files and numbers written so far."""

    args: argparse.Namespace
    out: Path
    image: object = None
    label: int = 0
    image_name: str = ""
    files: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    _models: dict = field(default_factory=dict)

    @property
    def everything(self) -> bool:
        return self.args.command == "all"

    def model(self, path: str | Path, label: Optional[str] = None) -> LoadedModel:
        key = (str(Path(path).resolve()), label)
        if key not in self._models:
            self._models[key] = load_model(path, label)
            check_digit_shape(self._models[key])
        return self._models[key]

    def checkpoint_paths(self) -> list[tuple[Optional[str], str]]:
        """--ckpt entries, then --vit-ckpt, --gevit-ckpt and every --posthoc-ckpt, as (label, path)."""
        args = self.args
        requested = [labelled(value) for value in getattr(args, "ckpt", [])]
        requested += [
            (None, str(p))
            for p in (
                getattr(args, "vit_ckpt", None),
                getattr(args, "gevit_ckpt", None),
                *getattr(args, "posthoc_ckpt", []),
            )
            if p
        ]
        return requested


# ---- one function per subcommand: draw, record numbers, return whether anything was drawn -------------------
def draw_rotation_gif(session: Session) -> bool:
    args, seen, chosen = session.args, set(), []
    for label, path in session.checkpoint_paths():
        if str(Path(path).resolve()) not in seen:  # each file once
            seen.add(str(Path(path).resolve()))
            chosen.append(session.model(path, label))
    if not chosen:
        if session.everything:
            return False
        raise MissingInput(
            "rotation-gif needs at least one checkpoint: --ckpt [LABEL=]PATH, --vit-ckpt or --gevit-ckpt"
        )
    angles = angles_every(args.angle_step)
    probabilities = rotation_predictions(chosen, session.image, angles)
    session.files.append(
        write_rotation_gif(
            chosen,
            session.image,
            session.label,
            angles,
            session.out / "rotation.gif",
            probabilities,
            args.frame_ms,
            session.image_name,
        )
    )
    session.files.append(
        plot_rotation_confidence(
            chosen, probabilities, session.label, angles, session.out / "rotation_confidence.png", session.image_name
        )
    )
    session.summary["rotation"] = rotation_summary(chosen, probabilities, session.label, angles)
    return True


def draw_latents(session: Session) -> bool:
    args = session.args
    if not args.gevit_ckpt:
        if session.everything:
            return False
        raise MissingInput("latents needs --gevit-ckpt PATH (a GE-ViT checkpoint)")
    gevit = session.model(args.gevit_ckpt, "GE-ViT")
    path, errors = plot_gevit_latents(
        gevit,
        session.image,
        session.label,
        session.out / "gevit_latents.png",
        args.channel,
        image_name=session.image_name,
    )
    deviation, _ = plot_gevit_latents(
        gevit,
        session.image,
        session.label,
        session.out / "gevit_latents_group_deviation.png",
        args.channel,
        subtract_group_mean=True,
        image_name=session.image_name,
    )
    session.files += [path, deviation]
    session.summary["latents"] = {
        "checkpoint": str(gevit.path),
        "equivariance_error_per_layer_and_turn": errors.tolist(),
        "max_equivariance_error": float(errors.max()),
    }
    return True


def draw_attention(session: Session) -> bool:
    args = session.args
    if not (args.gevit_ckpt or args.vit_ckpt):
        if session.everything:
            return False
        raise MissingInput("attention needs --gevit-ckpt PATH and/or --vit-ckpt PATH")
    if args.gevit_ckpt:
        session.files.append(
            plot_gevit_attention(
                session.model(args.gevit_ckpt, "GE-ViT"),
                session.image,
                session.label,
                session.out / "gevit_attention.png",
                session.image_name,
            )
        )
    if args.vit_ckpt:
        session.files.append(
            plot_vit_attention(
                session.model(args.vit_ckpt, "ViT"),
                session.image,
                session.label,
                session.out / "vit_attention.png",
                session.image_name,
            )
        )
    return True


def draw_view_weights(session: Session) -> bool:
    args = session.args
    if not args.posthoc_ckpt:
        if session.everything:
            return False
        raise MissingInput("view-weights needs --posthoc-ckpt PATH (a post-hoc lambda or equiattention checkpoint)")
    images, labels = validation_digits(0, args.num_images)
    session.summary["view_weights"] = {}
    for ckpt in args.posthoc_ckpt:
        model = session.model(ckpt)
        png, json_path, stats = plot_view_weights(
            model,
            images,
            labels,
            session.out / f"view_weights_{slug(model.label)}.png",
            pre_rotate=args.pre_rotate,
            seed=args.seed,
        )
        session.files += [png, json_path]
        session.summary["view_weights"][model.label] = {k: v for k, v in stats.items() if k != "per_image"}
    return True


def _runs_of_checkpoints(session: Session) -> dict[str, str]:
    """The run directories the given checkpoints came from (those with rotation results), labelled by the
    models already loaded (see :func:`scripts.figures.robustness.run_label`)."""
    runs = {}
    for label, path in session.checkpoint_paths():
        folder = Path(path).resolve().parent
        if folder.name != "checkpoints":
            continue
        try:
            read_robustness_curve(folder.parent)
        except FileNotFoundError:
            continue
        runs.setdefault(f"{folder.parent.name}: {session.model(path, label).description()}", str(folder.parent))
    return runs


def draw_robustness(session: Session) -> bool:
    runs = {}
    for value in session.args.runs:
        label, run_dir = labelled(value)
        runs[label or run_label(run_dir)] = run_dir
    if not runs and session.everything:
        runs = _runs_of_checkpoints(session)
    if not runs:
        if session.everything:
            return False
        raise MissingInput("robustness needs --runs DIR [LABEL=DIR ...] (train.py run directories)")
    path, curves = plot_robustness_comparison(runs, session.out / "rotation_robustness_comparison.png")
    session.files.append(path)
    session.summary["robustness"] = curves
    return True


# ---- command line -----------------------------------------------------------------------------------------
def _option_groups() -> dict[str, argparse.ArgumentParser]:
    """Parent parsers holding the options of each concern, shared by the subcommands that need them."""
    groups = {
        name: argparse.ArgumentParser(add_help=False)
        for name in ("common", "checkpoints", "gif", "latents", "views", "runs")
    }
    common = groups["common"]
    common.add_argument(
        "--out", type=Path, default=None, help="output folder (default logs/visualizations/<timestamp>)"
    )
    common.add_argument(
        "--wandb", action="store_true", help="also log the figures to W&B (project gevit; offline without credentials)"
    )
    common.add_argument("--image-index", type=int, default=0, help="index of the digit in the validation split")
    common.add_argument("--seed", type=int, default=0, help="seed of the random pre-rotations (view-weights)")
    checkpoints = groups["checkpoints"]
    checkpoints.add_argument(
        "--ckpt",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="a checkpoint for the rotation GIF (repeatable; one column each)",
    )
    checkpoints.add_argument("--vit-ckpt", type=Path, help="a ViT checkpoint (rotation GIF, attention)")
    checkpoints.add_argument("--gevit-ckpt", type=Path, help="a GE-ViT checkpoint (rotation GIF, latents, attention)")
    checkpoints.add_argument(
        "--posthoc-ckpt",
        type=Path,
        action="append",
        default=[],
        help="a post-hoc lambda / equiattention checkpoint (view-weights; repeatable)",
    )
    gif = groups["gif"]
    gif.add_argument(
        "--angle-step", type=float, default=10.0, help="degrees between GIF frames (default 10: 36 frames)"
    )
    gif.add_argument("--frame-ms", type=int, default=150, help="duration of one GIF frame in milliseconds")
    groups["latents"].add_argument(
        "--channel",
        type=int,
        action="append",
        default=None,
        help="channel shown per layer (one value for all layers, or one per layer); "
        "default: the channel varying most along the group axis",
    )
    views = groups["views"]
    views.add_argument("--num-images", type=int, default=256, help="validation digits for the view statistics")
    views.add_argument(
        "--no-pre-rotate",
        dest="pre_rotate",
        action="store_false",
        help="keep the digits upright instead of turning each by a random multiple of 90°",
    )
    groups["runs"].add_argument(
        "--runs",
        nargs="+",
        default=[],
        metavar="[LABEL=]DIR",
        help="train.py run directories (default for 'all': the runs of the given checkpoints)",
    )
    return groups


# name -> (draw function, help, option groups besides "common"); "all" runs every one the inputs allow
SUBCOMMANDS: dict[str, tuple[Callable[[Session], bool], str, tuple[str, ...]]] = {
    "rotation-gif": (draw_rotation_gif, "rotating digit with predictions", ("checkpoints", "gif")),
    "latents": (draw_latents, "GE-ViT feature maps per layer", ("checkpoints", "latents")),
    "attention": (draw_attention, "GE-ViT and ViT attention maps", ("checkpoints",)),
    "view-weights": (draw_view_weights, "post-hoc view weights", ("checkpoints", "views")),
    "robustness": (draw_robustness, "accuracy vs angle of several runs", ("runs",)),
}
COMMANDS = (*SUBCOMMANDS, "all")


def build_parser() -> argparse.ArgumentParser:
    groups = _option_groups()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, needs) in SUBCOMMANDS.items():
        sub.add_parser(name, parents=[groups["common"], *(groups[n] for n in needs)], help=help_text)
    sub.add_parser("all", parents=list(groups.values()), help="every figure the inputs allow")
    return parser


def run_command(args: argparse.Namespace) -> dict:
    """Make the figures of ``args.command`` in ``args.out``; returns the summary written to summary.json."""
    out: Path = args.out or Path("logs") / "visualizations" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    session = Session(args=args, out=out, summary={"command": args.command, "files": []})
    images, labels = validation_digits(args.image_index, 1)
    session.image, session.label = images, int(labels[0])
    session.image_name = f"validation digit #{args.image_index}"
    session.summary["image"] = {
        "split": "validation (RotMNIST-mini, upright)",
        "index": args.image_index,
        "label": session.label,
    }
    chosen = SUBCOMMANDS if args.command == "all" else {args.command: SUBCOMMANDS[args.command]}
    drawn = [draw(session) for draw, _, _ in chosen.values()]
    if not any(drawn):
        raise MissingInput("all: nothing to draw; give --vit-ckpt, --gevit-ckpt, --posthoc-ckpt, --ckpt or --runs")
    session.summary["files"] = [str(f) for f in session.files]
    if args.wandb:
        session.summary["wandb_logged"] = log_files(
            [f for f in session.files if f.suffix in (".png", ".gif")],
            session.summary,
            out,
            job_type="visualize",
            config={k: str(v) for k, v in vars(args).items()},
        )
    (out / "summary.json").write_text(json.dumps(session.summary, indent=1) + "\n")
    return session.summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    args = build_parser().parse_args(argv)
    try:
        summary = run_command(args)
    except (ValueError, FileNotFoundError, IndexError) as err:  # wrong or missing inputs: one message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    for file in summary["files"]:
        print(file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
