"""Learned canonicalization of this project against equiadapt (Mondal et al. 2023, ``equiadapt==0.1.2``), side by
side in one process: the same frozen upright-trained backbone, the same training batches, the same metrics.

    # stage 1: the backbone (a 19,658-parameter ViT, 5 epochs on upright embedded digits)
    python train.py experiment=vit_rotmnist_mini data.variant=upright_train model.net.embed_dim=32 \\
        model.net.depth=2 model.net.num_heads=2 model.net.mlp_hidden_dim=64 trainer.max_epochs=5 seed=0 \\
        logger=csv hydra.run.dir=logs/canon_bench/stage1
    # equiadapt is NOT a dependency of this project: put it (and what it imports that the project lacks)
    # in a throw-away folder, for this benchmark only
    pip install --no-deps --target /tmp/equiadapt_pkgs equiadapt==0.1.2 e2cnn kornia kornia_rs
    PYTHONPATH=/tmp/equiadapt_pkgs python -m benchmarks.canonicalization_vs_equiadapt \\
        --backbone logs/canon_bench/stage1/checkpoints/best-*.ckpt --json logs/canon_bench/results.json

Without equiadapt importable, only this project's methods run (and the script says how to get it).

Every method trains its canonicalizer alone (the backbone frozen, as ``model.regime=aggregator_only``) on the
same shuffled batches of the upright training digits, interleaved batch by batch so that the shared
machine's load falls on all of them alike: Adam, lr 1e-3, task cross-entropy plus the method's own terms
(the prior, a contrastive term). Group C4. Reported per method:

- ``val canon acc``: the fraction of upright validation digits, each turned by a random known quarter turn
  (fixed seed), whose canonical image is that digit (the nearest of its four quarter turns) — what
  ``val/canon_acc`` measures, read from the canonical images so that it means the same for every library;
- ``val acc`` on the upright validation digits and ``val rot acc`` on the validation digits turned by
  random angles (fixed seed): validation splits, which select the default;
- ``test acc`` on the rotated test digits (test split) and ``group acc`` (the mean over the four quarter
  turns of the test digits: equiadapt's ``test/group_acc``);
- training images/s (wall time of the steps, data in memory) and inference ms/image (eval, batches of
  256 test digits, interleaved rounds, median), with the load average beside them;
- the invariance curve: for angles every ``--curve-step`` degrees up to ``--curve-max``, the mean relative
  change of the logits of validation digits turned by that angle, and the accuracy on them (measured, not
  asserted: for a C4-exact method it is 0 at multiples of 90 degrees and repeats every 90).

Methods (``--methods``, comma list): ``ours:<key=value>/...`` builds ``conf/model/aggregator/<name>.yaml``
with overrides, e.g. ``ours:canonicalization/width=16/normalization=batch/prior_weight=10``;
``equiadapt`` (its default ``group_equivariant`` canonicalizer: e2cnn C4, 32 regular fields, 5x5, 3 layers,
batch norm, dropout 0.5, prior weight 100) and ``equiadapt_steerable`` (its ``steerable`` config: 16
channels, 7x7, 3 layers, prior weight 100; as released it does not build — it calls ``e2cnn.nn.FourierELU``,
which only escnn has — so it is built on escnn, see :func:`steerable_network_on_escnn`).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from datamodules import RotMNISTMiniDataModule
from gevit.rotations import rotate
from lightning_modules import PostHocClassifier
from runkit.checkpoint_loading import checkpoint_backbone
from runkit.posthoc_methods import aggregator_config

MEAN, STD = 0.1307, 0.3081
HOW_TO_GET_EQUIADAPT = (
    "equiadapt is not importable: pip install --no-deps --target /tmp/equiadapt_pkgs equiadapt==0.1.2 e2cnn "
    "kornia kornia_rs, then run with PYTHONPATH=/tmp/equiadapt_pkgs (only this project's methods run now)"
)
# The candidates for the default (width x prior weight, batch norm as equiadapt's), the other two
# canonicalizers, equiadapt's default. A wider grid is one --methods away (see the module docstring).
DEFAULT_METHODS = ",".join(
    [
        "ours:canonicalization/width=16/normalization=batch/prior_weight=10",
        "ours:canonicalization/width=32/normalization=batch/prior_weight=10",
        "ours:canonicalization/width=32/normalization=batch/prior_weight=100",
        "ours:canonicalization_steerable/normalization=batch/prior_weight=10",
        "ours:canonicalization_optimized/prior_weight=10",
        "equiadapt",
    ]
)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


# ---- methods: a canonicalizer, how it trains, its canonical images -------------------------------------------
class Ours:
    """A method of conf/model/aggregator/ inside this project's PostHocClassifier (regime aggregator_only)."""

    def __init__(self, spec: str, backbone, lr: float):
        import hydra

        name, *overrides = spec.split("/")
        config = aggregator_config(name)
        for override in overrides:
            key, _, value = override.partition("=")
            config[key] = yaml_value(value)
        self.name = "ours " + "/".join([name, *overrides])
        self.model = PostHocClassifier(
            backbone=backbone,
            aggregator=hydra.utils.instantiate(config),
            group="p4",
            regime="aggregator_only",
            num_classes=10,
            in_channels=1,
            image_size=28,
            input_mean=(MEAN,),
            input_std=(STD,),
        )
        self.parameters = list(self.model.trainable_parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr)

    def train_step(self, x, y) -> float:
        self.model.train()
        aggregator = self.model.net.aggregator
        loss = F.cross_entropy(self.model(x), y)
        for term in aggregator.auxiliary_losses(self.model.normalize(x), self.model.net.views).values():
            loss = loss + term
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def eval(self):
        self.model.eval()

    def logits(self, x):
        return self.model(x)

    def canonical(self, x):
        net = self.model.net
        return net.aggregator(self.model.normalize(x), net.views) * STD + MEAN


class Equiadapt:
    """equiadapt's image canonicalizer in front of the same backbone (canonicalization on raw images, background
    0 as theirs; the backbone sees the normalised canonical image), trained as its examples do: task loss +
    prior_weight * prior, Adam on the canonicalizer."""

    def __init__(self, kind: str, backbone, lr: float, equiadapt):
        from omegaconf import OmegaConf

        networks = equiadapt.images.canonicalization_networks
        canonicalization = equiadapt.images.canonicalization
        hyper = OmegaConf.create({"beta": 1.0, "input_crop_ratio": 0.8, "resize_shape": 96})
        if kind == "equiadapt":
            network = networks.ESCNNEquivariantNetwork((1, 28, 28), 32, 5, "rotation", 4, 3)
            self.canonicalizer = canonicalization.GroupEquivariantImageCanonicalization(network, hyper, (1, 28, 28))
        else:
            network = steerable_network_on_escnn(networks.escnn_networks)
            self.canonicalizer = canonicalization.SteerableImageCanonicalization(network, hyper, (1, 28, 28))
        self.name, self.backbone, self.prior_weight = kind, backbone, 100.0
        self.parameters = list(self.canonicalizer.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr)

    def train_step(self, x, y) -> float:
        self.canonicalizer.train()
        logits = self.backbone(normalize(self.canonicalizer(x)))
        loss = F.cross_entropy(logits, y) + self.prior_weight * self.canonicalizer.get_prior_regularization_loss()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def eval(self):
        self.canonicalizer.eval()

    def logits(self, x):
        return self.backbone(normalize(self.canonicalizer(x)))

    def canonical(self, x):
        return self.canonicalizer(x)


def steerable_network_on_escnn(escnn_networks):
    """equiadapt 0.1.2's ``ESCNNSteerableNetwork`` as its ``steerable`` config builds it (16 channels, 7x7, 3
    layers), run on escnn: as released it cannot be built, because it calls ``e2cnn.nn.FourierELU``, which
    e2cnn does not have (escnn does), and e2cnn 0.2.3's ``Rot2dOnR2(N=-1)`` requires a maximum frequency.
    A second copy of its module is given escnn under e2cnn's names (``Rot2dOnR2(N)`` ->
    ``rot2dOnR2(N, maximum_frequency=6)``, escnn's default; ``FourierELU`` on a regular grid of N rotations);
    the discrete network keeps running on e2cnn."""
    import importlib.util
    import types

    import escnn.gspaces
    import escnn.nn

    def fourier_elu(*args, **kwargs):
        return escnn.nn.FourierELU(*args, type="regular", **kwargs)

    shim = types.SimpleNamespace(
        nn=types.SimpleNamespace(**{**vars(escnn.nn), "FourierELU": fourier_elu}),
        gspaces=types.SimpleNamespace(Rot2dOnR2=lambda N=-1: escnn.gspaces.rot2dOnR2(N, maximum_frequency=6)),
    )
    spec = importlib.util.spec_from_file_location("equiadapt_steerable_on_escnn", escnn_networks.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.e2cnn, module.gspaces = shim, shim.gspaces
    return module.ESCNNSteerableNetwork((1, 28, 28), 16, 7, "rotation", 3)


class BackboneAlone:
    name = "backbone alone"
    parameters: list = []

    def __init__(self, backbone):
        self.backbone = backbone

    def eval(self):
        pass

    def logits(self, x):
        return self.backbone(normalize(x))


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


def import_equiadapt():
    try:
        import equiadapt  # noqa: F401
        import equiadapt.images.canonicalization
        import equiadapt.images.canonicalization_networks

        return equiadapt
    except ImportError:
        print(HOW_TO_GET_EQUIADAPT, file=sys.stderr)
        return None


# ---- metrics ------------------------------------------------------------------------------------------
@torch.no_grad()
def accuracy(method, images, labels, batch: int = 500) -> float:
    method.eval()
    correct = sum(
        int((method.logits(images[i : i + batch]).argmax(-1) == labels[i : i + batch]).sum())
        for i in range(0, len(images), batch)
    )
    return correct / len(images)


@torch.no_grad()
def canonicalizer_accuracy(method, upright, turns, batch: int = 500) -> float:
    """Fraction of known quarter turns of upright digits whose canonical image is the digit (nearest turn)."""
    method.eval()
    hits = 0
    for i in range(0, len(upright), batch):
        x, k = upright[i : i + batch], turns[i : i + batch]
        turned = torch.stack([torch.rot90(image, int(t), (-2, -1)) for image, t in zip(x, k)])
        canonical = method.canonical(turned)
        distances = torch.stack([(canonical - torch.rot90(x, j, (-2, -1))).flatten(1).norm(dim=1) for j in range(4)])
        hits += int((distances.argmin(0) == 0).sum())
    return hits / len(upright)


@torch.no_grad()
def angle_curve(method, images, labels, angles) -> dict:
    """Per angle a: the mean relative change of the logits when the images are turned by a (bilinear, zero
    padding), and the accuracy on the turned images."""
    method.eval()
    reference = method.logits(images)
    curve = {}
    for a in angles:
        logits = method.logits(rotate(images, float(a)))
        change = ((logits - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12)).mean()
        curve[f"{a:g}"] = {
            "logit_change": float(change),
            "accuracy": float((logits.argmax(-1) == labels).float().mean()),
        }
    return curve


@torch.no_grad()
def inference_ms(methods, images, rounds: int) -> dict:
    times = {m.name: [] for m in methods}
    for m in methods:
        m.eval()
        m.logits(images)  # warm-up (escnn builds its filters on the first eval call)
    for _ in range(rounds):
        for m in methods:
            start = time.perf_counter()
            m.logits(images)
            times[m.name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) / len(images) for name, t in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="stage-1 checkpoint (a glob is expanded)")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved inference timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve-step", type=float, default=5.0, help="angles of the invariance curve (degrees)")
    parser.add_argument("--curve-max", type=float, default=90.0, help="the curve's last angle (degrees)")
    parser.add_argument("--curve-samples", type=int, default=300, help="validation digits of the curve")
    parser.add_argument("--save", type=Path, help="folder for the trained canonicalizers' state dicts")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    found = sorted(glob.glob(args.backbone))
    if len(found) != 1:
        raise SystemExit(f"--backbone {args.backbone} matches {len(found)} files (expected one checkpoint)")
    backbone = checkpoint_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path=found[0]).eval()
    backbone.requires_grad_(False)

    data = RotMNISTMiniDataModule(variant="upright_train", train_size=args.train_size)
    data.setup()

    def tensors(dataset):
        return dataset.images.float().div(255.0), dataset.labels

    train_x, train_y = tensors(data.train_set)
    val_x, val_y = tensors(data.val_set)
    test_x, test_y = tensors(data.test_set)
    generator = torch.Generator().manual_seed(args.seed)
    val_turns = torch.randint(0, 4, (len(val_x),), generator=generator)
    val_rotated = rotate(val_x, torch.rand(len(val_x), generator=generator) * 360.0)

    equiadapt = None
    methods = []
    for spec in args.methods.split(","):
        torch.manual_seed(args.seed)  # every method starts from its own seeded initialisation
        if spec.startswith("ours:"):
            methods.append(Ours(spec[len("ours:") :], backbone, args.lr))
        elif spec in ("equiadapt", "equiadapt_steerable"):
            equiadapt = equiadapt or import_equiadapt()
            if equiadapt is not None:
                methods.append(Equiadapt(spec, backbone, args.lr, equiadapt))
        else:
            raise SystemExit(f"unknown method {spec!r}: ours:<yaml>/key=value..., equiadapt, equiadapt_steerable")

    load = {"start": os.getloadavg()}
    seconds = {m.name: 0.0 for m in methods}
    images_seen = 0
    order = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        permutation = torch.randperm(len(train_x), generator=order)
        for step, start in enumerate(range(0, len(train_x), args.batch_size)):
            index = permutation[start : start + args.batch_size]
            x, y = train_x[index], train_y[index]
            for m in methods:
                began = time.perf_counter()
                loss = m.train_step(x, y)
                seconds[m.name] += time.perf_counter() - began
                if not math.isfinite(loss):
                    raise SystemExit(f"{m.name}: loss {loss} at epoch {epoch} step {step}")
            images_seen += len(index)
            if step % 10 == 0:
                print(f"epoch {epoch} step {step}: load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    load["after_training"] = os.getloadavg()

    everything = [BackboneAlone(backbone), *methods]
    ms = inference_ms(everything, test_x[:256], args.rounds)
    load["after_timing"] = os.getloadavg()
    curve = [args.curve_step * i for i in range(int(args.curve_max // args.curve_step) + 1)]
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(methods):
            module = m.model.net.aggregator if isinstance(m, Ours) else m.canonicalizer
            torch.save({"method": m.name, "state_dict": module.state_dict()}, args.save / f"{i:02d}.pt")
    rows = []
    for m in everything:
        trains = bool(m.parameters)
        turned_test = [accuracy(m, torch.rot90(test_x, k, (-2, -1)), test_y) for k in range(4)]
        rows.append(
            {
                "method": m.name,
                "parameters": sum(p.numel() for p in m.parameters),
                "val_canon_acc": canonicalizer_accuracy(m, val_x, val_turns) if trains else None,
                "val_acc": accuracy(m, val_x, val_y),
                "val_rot_acc": accuracy(m, val_rotated, val_y),
                "test_acc": turned_test[0],
                "group_acc": sum(turned_test) / 4,
                "train_images_per_s": images_seen / seconds[m.name] if trains else None,
                "inference_ms_per_image": ms[m.name],
                "angle_curve": angle_curve(m, val_x[: args.curve_samples], val_y[: args.curve_samples], curve),
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "angle_curve"}), flush=True)
    load["end"] = os.getloadavg()
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "load_average": load, "rows": rows}
    print(markdown(rows))
    print(curve_markdown(rows, curve))
    print(f"load average (1, 5, 15 min): {load}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def markdown(rows) -> str:
    def pct(value):
        return "–" if value is None else f"{100 * value:.1f} %"

    lines = [
        "| method | params | val canon acc | val acc | val rot acc | test acc (rotated) | group acc | train images/s "
        "| inference ms/image |",
        "|---" * 9 + "|",
    ]
    for r in rows:
        rate = "–" if r["train_images_per_s"] is None else f"{r['train_images_per_s']:.1f}"
        lines.append(
            f"| {r['method']} | {r['parameters']:,} | {pct(r['val_canon_acc'])} | {pct(r['val_acc'])} | "
            f"{pct(r['val_rot_acc'])} | {pct(r['test_acc'])} | {pct(r['group_acc'])} | {rate} | "
            f"{r['inference_ms_per_image']:.2f} |"
        )
    return "\n".join(lines)


def curve_markdown(rows, angles) -> str:
    """Relative logit change against the angle (one row per method; C4-exact methods repeat every 90)."""
    lines = ["| method | " + " | ".join(f"{a:g}°" for a in angles) + " |", "|---" * (len(angles) + 1) + "|"]
    for r in rows:
        cells = [f"{r['angle_curve'][f'{a:g}']['logit_change']:.2g}" for a in angles]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
