"""The speed table of docs/benchmarks.md: every model family's training step and eval forward, GE-ViT's
fused attention against its eager path and the official code, in one process, on the CPU.

    python -m benchmarks.all_models --threads 2                                   # every row, markdown
    python -m benchmarks.all_models --threads 2 --official-dir /path/to/GEVit     # + the official code
    python -m benchmarks.all_models --rows gevit-p4,gevit-p8 --eager-steps 0      # a few rows, no eager
    python -m benchmarks.all_models --threads 2 --busy 1 --rows gevit-p4          # beside a busy process

Each row is a training configuration (``experiment=...``, built exactly as train.py builds it, with its
batch size and optimiser; the data module only gives shape facts, no data is read). Timed: the training
step (forward + cross-entropy backward + optimiser step, dropout on) and the eval forward at the same
batch, medians of ``--steps`` after ``--warmup``, wall time and process CPU time. Rows whose network has
GE-ViT attention also time the eager attention path (``--eager-steps``, slow: minutes per step at p16).
With ``--official-dir`` (a checkout of github.com/ZJUCDSYangKaifan/GEVit, never vendored; it needs
``einops`` on ``PYTHONPATH``) the GE-ViT rows of ``--official-groups`` also time the official model with
the same weights, its steps interleaved with ours (``benchmarks/official_side_by_side.py`` is the
focused version). ``--busy N`` runs N busy-looping processes beside the measurement (what a shared node
does to a run). Prints one JSON line per row, then the markdown table, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import gevit  # noqa: F401  (first: OpenMP's wait policy is read when torch loads, gevit/openmp.py)

# isort: split
import torch

GEVIT_GROUPS = ("p4", "p8", "p12", "p16", "p4m")
ROWS = {
    **{f"gevit-{g}": (["experiment=gevit_rotmnist", f"model.net.group={g}"], g) for g in GEVIT_GROUPS},
    "hybrid-p4": (["experiment=hybrid_rotmnist", "model.net.group=p4"], None),
    "hybrid-p4m": (["experiment=hybrid_rotmnist", "model.net.group=p4m"], None),
    "eqcvt": (["experiment=eqcvt_rotmnist"], None),
    "vit": (["experiment=vit_rotmnist"], None),
}


def build(overrides):
    import hydra

    from runkit.config import compose

    cfg = compose(overrides)
    model = hydra.utils.instantiate(cfg.model.net)
    return model, cfg


def make_optimizer(cfg, model):
    import hydra

    factory = hydra.utils.instantiate(cfg.model.optimizer) if cfg.model.get("optimizer") else None
    params = [p for p in model.parameters() if p.requires_grad]
    return factory(params=params) if factory is not None else torch.optim.Adam(params, lr=1e-3)


def has_group_attention(model) -> bool:
    from gevit.layers.group_attention import _GroupAttentionBase

    return any(isinstance(m, _GroupAttentionBase) for m in model.modules())


class Contender:
    """One model with its optimiser and a fixed batch; ``train()`` / ``evaluate()`` return (wall, cpu)."""

    def __init__(self, model, optimizer, x, y, path=None):
        self.model, self.optimizer, self.x, self.y, self.path = model, optimizer, x, y, path

    def _timed(self, fn):
        from gevit.layers.kernels.backend import set_attention_backend

        set_attention_backend(self.path)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def train(self):
        def step():
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
            self.optimizer.step()

        return self._timed(step)

    def evaluate(self):
        def forward():
            self.model.eval()
            with torch.no_grad():
                self.model(self.x)

        return self._timed(forward)


def medians(samples):
    if not samples:
        return None
    return {
        "wall_s": round(statistics.median(w for w, _ in samples), 4),
        "cpu_s": round(statistics.median(c for _, c in samples), 4),
        "n": len(samples),
    }


def measure_row(name, args):
    overrides, official_group = ROWS[name]
    torch.manual_seed(0)
    model, cfg = build(overrides)
    batch = cfg.data.batch_size
    x = torch.rand(batch, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    y = torch.randint(cfg.data.num_classes, (batch,))
    row = {
        "row": name,
        "overrides": overrides,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "threads": torch.get_num_threads(),
    }
    attention = has_group_attention(model)
    contenders = {"ours": Contender(model, None, x, y, "auto")}
    if args.official_dir and official_group in args.official_groups.split(","):
        from official_side_by_side import official_model

        from gevit.models.group_transformer import convert_official_state_dict

        official = official_model(args.official_dir, official_group, cfg.model.net.attention_window)
        model.load_state_dict(convert_official_state_dict(official.state_dict(), model), strict=True)
        contenders["official"] = Contender(official, None, x, y, None)
    for contender in contenders.values():
        contender.optimizer = make_optimizer(cfg, contender.model)
    if attention and args.eager_steps > 0:
        torch.manual_seed(0)
        eager, _ = build(overrides)
        eager.load_state_dict(model.state_dict())
        contenders["eager"] = Contender(eager, make_optimizer(cfg, eager), x, y, "eager")

    from gevit.layers.kernels.backend import select_backend

    row["attention_path"] = select_backend(x) if attention else None
    train = {name: [] for name in contenders}
    evaluation = []
    for contender in contenders.values():  # warm-up: builds the extension, the allocator, escnn caches
        for _ in range(args.warmup if contender.path == "auto" else 1):
            contender.train()
    for _ in range(args.warmup):
        contenders["ours"].evaluate()
    for rep in range(args.steps):  # interleaved, so that load changes hit every contender alike
        for cname, contender in contenders.items():
            limit = args.official_steps if cname == "official" else args.eager_steps if cname == "eager" else None
            if limit is None or rep < limit:
                train[cname].append(contender.train())
        evaluation.append(contenders["ours"].evaluate())
    row["train"] = {cname: medians(samples) for cname, samples in train.items()}
    row["eval"] = medians(evaluation)
    ours = row["train"]["ours"]["wall_s"]
    row["train_images_per_s"] = round(batch / ours, 1)
    row["train_over_eval"] = round(ours / row["eval"]["wall_s"], 2)
    for other in ("eager", "official"):
        if other in row["train"]:
            row[f"speedup_vs_{other}"] = round(row["train"][other]["wall_s"] / ours, 2)
    return row


def seconds(value):
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def markdown(rows):
    lines = [
        "| model | params | batch | train step | eval forward | train / eval | train images/s "
        "| eager train step (fused ×) | official train step (ours ×) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        train = row["train"]
        eager = train.get("eager")
        official = train.get("official")
        lines.append(
            f"| {row['row']} | {row['params']:,} | {row['batch']} | {seconds(train['ours']['wall_s'])} "
            f"| {seconds(row['eval']['wall_s'])} | {row['train_over_eval']} | {row['train_images_per_s']} "
            f"| {seconds(eager['wall_s']) + ' (×' + str(row['speedup_vs_eager']) + ')' if eager else '—'} "
            f"| {seconds(official['wall_s']) + ' (×' + str(row['speedup_vs_official']) + ')' if official else '—'} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eager-steps", type=int, default=2, help="eager-path training steps per row (0: skip)")
    parser.add_argument("--official-dir", type=Path, default=None)
    parser.add_argument("--official-groups", default="p4,p8")
    parser.add_argument("--official-steps", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes to run beside")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official_dir is not None and not (args.official_dir / "g_selfatt").is_dir():
        parser.error(f"{args.official_dir} has no g_selfatt package (a GEVit checkout)")
    names = args.rows.split(",")
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    busy = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.busy)]
    rows = []
    try:
        load_start = os.getloadavg()
        for name in names:
            row = measure_row(name, args)
            row["load_average"] = [round(v, 2) for v in os.getloadavg()]
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print()
    print(
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, {args.busy} busy processes beside, "
        f"load average {load_start[0]:.2f} at the start and {os.getloadavg()[0]:.2f} at the end, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
