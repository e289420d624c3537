"""Activation memory (bytes saved for backward) and training-step time of a GE-ViT model on each
attention path, side by side in one process.

    python -m benchmarks.attention_memory --threads 2                          # PCam model, batch 2 and 32
    python -m benchmarks.attention_memory --batches 2 --paths cpu,eager --steps 2
    python -m benchmarks.attention_memory --config rotmnist --batches 8

Memory is the sum of the distinct storages autograd saves for the backward during one training
forward (``torch.autograd.graph.saved_tensors_hooks``): the activation memory a training step holds at
its peak, without the allocator's noise. A path/batch whose estimate (eager path: linear in the batch)
exceeds ``--max-gb`` is extrapolated from the smallest batch instead of run, and marked so.
Prints one JSON line; results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

CONFIGS = {
    # conf/experiment/gevit_pcam.yaml (the official PCam configuration)
    "pcam": dict(
        group="p4",
        attention_window=5,
        in_channels=3,
        num_classes=2,
        image_size=96,
        num_channels=12,
        block_sizes=[0, 1, 2, 1],
        expansion_per_block=[1, 2, 2, 2],
        crop_per_layer=[0, 2, 1, 1],
        normalize_between_layers=True,
        maxpool_after_last_block=True,
    ),
    "rotmnist": dict(group="p4", attention_window=5),
}


def saved_bytes(model, x, y) -> tuple[int, float]:
    storages: dict = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return sum(storages.values()), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pcam", choices=sorted(CONFIGS))
    parser.add_argument("--group", default=None)
    parser.add_argument("--batches", default="2,32")
    parser.add_argument("--paths", default="cpu,eager")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per path and batch (after one)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-gb", type=float, default=8.0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from gevit.layers.kernels.backend import set_attention_backend
    from gevit.models import GroupTransformer

    options = dict(CONFIGS[args.config], **({"group": args.group} if args.group else {}))
    torch.manual_seed(0)
    model = GroupTransformer(**options).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    batches = [int(b) for b in args.batches.split(",")]
    results: dict = {}
    per_image: dict = {}
    for path in args.paths.split(","):
        set_attention_backend(path)
        for batch in sorted(batches):
            key = f"{path}@{batch}"
            if path in per_image and per_image[path] * batch > args.max_gb * 1e9:
                results[key] = {"saved_gb": round(per_image[path] * batch / 1e9, 3), "extrapolated": True}
                continue
            x = torch.randn(
                batch, options.get("in_channels", 1), options.get("image_size", 28), options.get("image_size", 28)
            )
            y = torch.randint(options.get("num_classes", 10), (batch,))
            optimizer.zero_grad(set_to_none=True)
            nbytes, first = saved_bytes(model, x, y)
            per_image.setdefault(path, nbytes / batch)
            times = []
            for _ in range(args.steps):
                optimizer.zero_grad(set_to_none=True)
                start = time.perf_counter()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                times.append(time.perf_counter() - start)
            results[key] = {
                "saved_gb": round(nbytes / 1e9, 3),
                "first_step_s": round(first, 3),
                "median_step_s": round(statistics.median(times), 3) if times else None,
            }
    set_attention_backend(None)
    print(
        json.dumps(
            {
                "config": args.config,
                "options": options,
                "threads": torch.get_num_threads(),
                "params": sum(p.numel() for p in model.parameters()),
                "results": results,
                "torch": torch.__version__,
                "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )


if __name__ == "__main__":
    main()
