"""Cost per image of learned canonicalization (one backbone call) against the |G|-view post-hoc aggregators
(|G| backbone calls, batched), side by side in one process.

    python -m benchmarks.posthoc_cost                         # the seed ViT (28x28 digits), C4 and D4
    python -m benchmarks.posthoc_cost --backbone resnet18 --image-size 96 --channels 3 --groups p4m

For each group the wrappers are built around the same random backbone, in eval mode, and timed on the same
random batch in interleaved rounds (``--rounds``; the machine is shared and noisy, so the median per
method is reported and the ratio is what matters): ``mean`` and ``lambda`` (|G| views), ``canonicalization``
(the escnn orientation net + one backbone call). Prints one JSON line per group with ms per image and the
ratio mean / canonicalization.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import torch

from gevit.posthoc import (
    LambdaAggregator,
    LearnedCanonicalization,
    MeanAggregator,
    PostHocInvariant,
    timm_backbone,
    vit_backbone,
)


def backbone_of(args):
    if args.backbone == "vit":  # the architecture of the post-hoc seed experiments
        return vit_backbone(num_classes=10, in_channels=args.channels, image_size=args.image_size)
    return timm_backbone(
        num_classes=10, in_channels=args.channels, image_size=args.image_size, model_name=args.backbone
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="vit", help="vit (this project's, seed size) or a timm model name")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--groups", default="p4,p4m")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    # One thread by default: on an oversubscribed shared machine, intra-op threads wait for each other and
    # a fixed per-call overhead swamps the work being compared.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = backbone_of(args).eval()
    images = torch.rand(args.batch, args.channels, args.image_size, args.image_size)
    for group in args.groups.split(","):
        methods = {
            "mean": MeanAggregator,
            "lambda": LambdaAggregator,
            "canonicalization": functools.partial(LearnedCanonicalization),
        }
        wrappers = {name: PostHocInvariant(backbone, group, factory).eval() for name, factory in methods.items()}
        times = {name: [] for name in wrappers}
        with torch.inference_mode():
            for model in wrappers.values():  # warm-up
                model(images)
            for _ in range(args.rounds):
                for name, model in wrappers.items():
                    start = time.perf_counter()
                    model(images)
                    times[name].append(time.perf_counter() - start)
        ms = {name: 1000 * statistics.median(t) / args.batch for name, t in times.items()}
        print(
            json.dumps(
                {
                    "group": group,
                    "order": wrappers["mean"].group.order,
                    "backbone": args.backbone,
                    "image_size": args.image_size,
                    "batch": args.batch,
                    "rounds": args.rounds,
                    "ms_per_image": {k: round(v, 4) for k, v in ms.items()},
                    "ratio_mean_over_canonicalization": round(ms["mean"] / ms["canonicalization"], 2),
                    "ratio_lambda_over_canonicalization": round(ms["lambda"] / ms["canonicalization"], 2),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "machine": platform.machine(),
                }
            )
        )


if __name__ == "__main__":
    main()
