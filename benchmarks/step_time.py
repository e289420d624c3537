"""Time training steps (forward + backward + optimiser step) and eval forwards of any configured model.

    python -m benchmarks.step_time                                  # the default ViT, batch 128
    python -m benchmarks.step_time --batch 8 --steps 5 model=vit data=pcam
    python -m benchmarks.step_time --threads 2 -- model.net.depth=12
    python -m benchmarks.step_time --batch 8 --attention eager model=gevit     # GE-ViT's reference path

GE-ViT/GSA-Nets attention runs on the path ``--attention`` names (default ``auto``: the fused CPU kernel
on the CPU, Triton on CUDA, eager when neither is available); the JSON line says which path ran
(``attention_path``). ``benchmarks/official_side_by_side.py`` times the official GE-ViT against ours.

Positional arguments are Hydra overrides of conf/train.yaml; the model is built exactly as train.py
builds it (the data module is only used for its shape facts, no data is read). Prints one JSON line
with the median and quartiles in milliseconds and images/s. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def build_model(overrides):
    import hydra

    from runkit.config import compose

    cfg = compose(overrides)
    return hydra.utils.instantiate(cfg.model), cfg


def timed(fn, steps, warmup, device):
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": round(statistics.median(times), 2), "q1_ms": round(q[0], 2), "q3_ms": round(q[2], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--attention", default="auto", choices=["auto", "eager", "cpu", "triton"], help="GE-ViT/GSA-Nets attention path"
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from gevit.layers.kernels.backend import select_backend, set_attention_backend

    set_attention_backend(args.attention)
    attention_path = select_backend(torch.empty(1, device=device))
    model, cfg = build_model(args.overrides)
    model = model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(args.batch, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size, device=device)
    y = torch.randint(cfg.data.num_classes, (args.batch,), device=device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def eval_forward():
        with torch.no_grad():
            model(x)

    model.train()
    train = timed(train_step, args.steps, args.warmup, device)
    model.eval()
    evaluation = timed(eval_forward, args.steps, args.warmup, device)
    print(
        json.dumps(
            {
                "model": cfg.model.get("net", {}).get("_target_", cfg.model._target_),
                "overrides": args.overrides,
                "batch": args.batch,
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "threads": torch.get_num_threads(),
                "params": sum(p.numel() for p in model.parameters()),
                "attention_path": attention_path,
                "train_step": train,
                "eval_forward": evaluation,
                "train_images_per_s": round(args.batch / train["median_ms"] * 1000, 1),
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
