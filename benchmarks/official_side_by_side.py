"""GE-ViT training steps of the official implementation and of this project, timed side by side in one
process with the same weights (the official model's state_dict converted into ours), interleaved
repetitions, medians and ratios.

    python -m benchmarks.official_side_by_side --official-dir /path/to/GEVit --threads 2
    python -m benchmarks.official_side_by_side --group p8 --reps 3         # ours only (no --official-dir)
    python -m benchmarks.official_side_by_side --paths cpu,eager           # our fused kernel and eager path

``--official-dir`` is a checkout of github.com/ZJUCDSYangKaifan/GEVit (never vendored here); without it
the official half is skipped. One step = forward + cross-entropy backward + Adam step on a random batch
(rotMNIST geometry: 28x28x1, 10 classes, the official rotMNIST configuration; dropout active as in
training). Before timing, the eval-mode logits of every model are compared with the official ones.
Prints one JSON line; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import gevit  # isort: skip  (first: OpenMP's wait policy is read when torch loads, gevit/openmp.py)
import torch  # isort: skip

ROTATIONS = {"p4": 4, "p8": 8, "p12": 12, "p16": 16}


def official_model(official_dir: Path, group: str, attention_window: int):
    sys.path.insert(0, str(official_dir))
    import g_selfatt.groups as groups
    import models

    official_group = groups.SE2(num_elements=ROTATIONS[group]) if group in ROTATIONS else groups.E2(num_elements=8)
    return models.GroupTransformer(
        group=official_group,
        in_channels=1,
        num_channels=20,
        block_sizes=[2, 3],
        expansion_per_block=1,
        crop_per_layer=[2, 0, 2, 1, 1],
        image_size=28,
        num_classes=10,
        dropout_rate_after_maxpooling=0.0,
        maxpool_after_last_block=False,
        normalize_between_layers=False,
        patch_size=attention_window,
        num_heads=9,
        norm_type="LayerNorm",
        activation_function="Swish",
        attention_dropout_rate=0.1,
        value_dropout_rate=0.1,
        whitening_scale=1.41421356,
    )


def ours(group: str, attention_window: int, state_dict=None):
    from gevit.models.group_transformer import convert_official_state_dict

    net = gevit.models.GroupTransformer(group=group, attention_window=attention_window)
    if state_dict is not None:
        net.load_state_dict(convert_official_state_dict(state_dict, net), strict=True)
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-dir", type=Path, default=None)
    parser.add_argument("--group", default="p4", choices=sorted(ROTATIONS) + ["p4m"])
    parser.add_argument("--attention-window", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--paths", default="cpu", help="comma-separated attention paths of ours: cpu, eager")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from gevit.layers.kernels.backend import set_attention_backend

    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(10, (args.batch,))
    contenders = {}
    state = None
    if args.official_dir is not None and (args.official_dir / "g_selfatt").is_dir():
        official = official_model(args.official_dir, args.group, args.attention_window)
        state = official.state_dict()
        contenders["official"] = (official, None)
    elif args.official_dir is not None:
        print(
            f"[side-by-side] {args.official_dir} has no g_selfatt package: skipping the official model", file=sys.stderr
        )
    for path in args.paths.split(","):
        net = ours(args.group, args.attention_window, state)
        if state is None:  # no official model: every path gets the first one's weights (the same function)
            first = next((m for m, _ in contenders.values()), None)
            if first is not None:
                net.load_state_dict(first.state_dict())
        contenders[f"ours-{path}"] = (net, path)

    # same function first (eval mode, no dropout)
    agreement = {}
    with torch.no_grad():
        reference = None
        for name, (model, path) in contenders.items():
            set_attention_backend(path)
            logits = model.eval()(x)
            reference = logits if reference is None else reference
            agreement[name] = float((logits - reference).norm() / reference.norm())

    steps = {}
    for name, (model, path) in contenders.items():
        model.train()
        steps[name] = (model, path, torch.optim.Adam(model.parameters(), lr=1e-3))

    def step(name):
        model, path, optimizer = steps[name]
        set_attention_backend(path)
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in steps:  # warm-up (builds the extension, allocator)
        step(name)
    times = {name: [] for name in steps}
    for _ in range(args.reps):  # interleaved so that load changes hit every contender alike
        for name in steps:
            times[name].append(step(name))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("official")
    print(
        json.dumps(
            {
                "group": args.group,
                "attention_window": args.attention_window,
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "reps": args.reps,
                "params": {name: sum(p.numel() for p in m.parameters()) for name, (m, _, _) in steps.items()},
                "logit_rel_diff_vs_first": agreement,
                "median_step_s": {k: round(v, 4) for k, v in medians.items()},
                "all_steps_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
                "speedup_vs_official": {k: round(base / v, 2) for k, v in medians.items()} if base else None,
                "speedup_vs_ours_eager": (
                    {k: round(medians["ours-eager"] / v, 2) for k, v in medians.items()}
                    if "ours-eager" in medians
                    else None
                ),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "processor": platform.processor(),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )
    set_attention_backend(None)


if __name__ == "__main__":
    main()
