"""Where the hybrid's training step goes, side by side with other models in one process.

    python -m benchmarks.hybrid_profile --threads 1                 # before vs the recipe (p4, p4m) vs GE-ViT mini
    python -m benchmarks.hybrid_profile --batch 64 --variant "w3=model=hybrid model.net.attention_window=3"
    python -m benchmarks.hybrid_profile --kernel-sizes 7,14,28      # fused attention cost per query position
    python -m benchmarks.hybrid_profile --stem-layers "hybrid p4 recipe"   # that variant's stem, layer by layer

Each ``--variant NAME=OVERRIDES`` (Hydra overrides of conf/train.yaml, space-separated) is built as train.py
builds it (the LightningModule with its configured optimiser; no data is read) and timed on random images:
full training steps at each config's own batch size (``--batch`` to fix one) in interleaved rounds, so that a busy machine
slows every variant alike, median per variant. Then each part of the network is timed alone (forward and
backward of that module on the input it received in a real step, with a random output gradient):

* ``stem``: the escnn stem (R2Conv, BatchNorm, ReLU, pooling) or the patch embedding, with the reshape that
  hands its output to GE-ViT;
* ``lifting attention`` / ``group attention``: GE-ViT's attention layers (q/k/v projection, fused kernel,
  output projection), all layers together;
* ``GE-ViT other``: the rest of the GE-ViT part (norms, Swish, the bottleneck MLPs, shortcuts, head, pooling):
  the whole GE-ViT part timed alone minus its attention layers;
* ``optimizer``: the optimiser step; ``rest``: the full step minus all of the above (loss, zero_grad, the
  input normalisation, autograd bookkeeping).

``--kernel-sizes`` times one GroupSelfAttention layer (the recipe's group, channels, heads and window) on
s x s maps for each s: microseconds per query position for forward + backward, which shows what the fused
kernel's vector tiles cost on small maps. ``--stem-layers NAME`` times each escnn layer of that variant's
stem alone (forward + backward). Prints one JSON object; results are recorded in docs/hybrid.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn as nn

# The hybrid as the leaderboard trained it before handover=regular (group-pooled scalars lifted by GE-ViT:
# 20 channels, 9 heads, four 5x5-attention layers, LayerNorm, dropout; batch 128, 43,380 parameters at p4).
BEFORE = (
    "model=hybrid model.net.handover=scalar model.net.stem_depth=1 model.net.width_group=null "
    "model.net.num_channels=20 model.net.num_heads=9 model.net.attention_window=5 model.net.block_sizes=[4] "
    "model.net.norm=layer model.net.attention_dropout=0.1 model.net.value_dropout=0.1 "
    "model.net.zero_init_head=false model.net.position_bias_init=zero"
)
DEFAULT_VARIANTS = [
    f"hybrid p4 before={BEFORE}",
    f"hybrid p4m before={BEFORE} model.net.group=p4m",
    "hybrid p4 recipe=experiment=hybrid_rotmnist_mini",
    "hybrid p4m recipe=experiment=hybrid_rotmnist_mini model.net.group=p4m",
    "gevit mini p4=experiment=gevit_rotmnist_mini",
    "gevit mini p4 batch 64=experiment=gevit_rotmnist_mini data.batch_size=64",
]


def build(overrides: list[str]):
    import hydra

    from runkit.config import compose

    cfg = compose(overrides)
    module = hydra.utils.instantiate(cfg.model)
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)(module.parameters())
    return module, optimizer, cfg


def parts_of(net: nn.Module) -> dict[str, list[nn.Module]]:
    """The timed parts of a HybridViT or GroupTransformer: name -> modules timed alone."""
    from gevit.layers.blocks import GroupTransformerBlock

    vit = getattr(net, "vit", net)
    parts: dict[str, list[nn.Module]] = {}
    if vit is not net:
        parts["stem"] = [ArtificialImage(net)]
    if vit.lifting is not None:
        parts["lifting attention"] = [vit.lifting]
    parts["group attention"] = [
        layer.attention for layer in vit.transformer if isinstance(layer, GroupTransformerBlock)
    ]
    parts["GE-ViT part"] = [vit]
    return parts


class ArtificialImage(nn.Module):
    """The hybrid's stem and handover as one module (what ``HybridViT.artificial_image`` computes)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.artificial_image(x)


def capture_inputs(module, x, modules: list[nn.Module]) -> dict[int, tuple]:
    """The positional inputs each of ``modules`` receives in one forward of ``module`` (the first call)."""
    seen: dict[int, tuple] = {id(m): (x,) for m in modules if isinstance(m, ArtificialImage)}
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=id(m): seen.setdefault(i, args)) for m in modules]
    with torch.no_grad():
        module(x)
    for hook in hooks:
        hook.remove()
    return seen


def fwd_bwd(module: nn.Module, args: tuple, needs_input_grad: bool):
    inputs = tuple(a.detach().requires_grad_(needs_input_grad) if torch.is_tensor(a) else a for a in args)
    out = module(*inputs)
    out.backward(torch.randn_like(out))


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def profile(variants: dict[str, list[str]], batch: int, rounds: int, warmup: int) -> dict:
    built = {}
    for name, overrides in variants.items():
        torch.manual_seed(0)
        module, optimizer, cfg = build(overrides)
        module.train()
        net = module.net
        size = batch or cfg.data.batch_size
        x = torch.rand(size, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
        y = torch.randint(cfg.data.num_classes, (size,))
        parts = parts_of(net)
        inputs = capture_inputs(net, module.normalize(x), sum(parts.values(), []))
        built[name] = (module, optimizer, x, y, parts, inputs, net)
    step_times = {name: [] for name in variants}
    part_times = {name: {part: [] for part in built[name][4]} | {"optimizer": []} for name in variants}
    for r in range(warmup + rounds):
        for name, (module, optimizer, x, y, parts, inputs, net) in built.items():
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(x), y).backward()
            optimizer.step()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                step_times[name].append(elapsed)
            for part, modules in parts.items():
                start = time.perf_counter()
                for m in modules:
                    fwd_bwd(m, inputs[id(m)], needs_input_grad=part != "stem")
                if r >= warmup:
                    part_times[name][part].append(time.perf_counter() - start)
            start = time.perf_counter()
            optimizer.step()
            if r >= warmup:
                part_times[name]["optimizer"].append(time.perf_counter() - start)
    results = {}
    for name, (module, *_rest, net) in built.items():
        step = median_ms(step_times[name])
        measured = {part: median_ms(times) for part, times in part_times[name].items()}
        attention = measured.get("lifting attention", 0.0) + measured["group attention"]
        shares = {}
        if "stem" in measured:
            shares["stem"] = measured["stem"]
        if "lifting attention" in measured:
            shares["lifting attention"] = measured["lifting attention"]
        shares["group attention"] = measured["group attention"]
        shares["GE-ViT other"] = round(measured["GE-ViT part"] - attention, 2)
        shares["optimizer"] = measured["optimizer"]
        shares["rest"] = round(step - sum(shares.values()), 2)
        results[name] = {
            "overrides": variants[name],
            "params": sum(p.numel() for p in module.parameters()),
            "train_step_ms": step,
            "batch": len(built[name][2]),
            "train_images_per_s": round(len(built[name][2]) / step * 1000, 1),
            "parts_ms": shares,
            "parts_share": {part: round(ms / step, 3) for part, ms in shares.items()},
        }
    return results


def kernel_cost(sizes: list[int], group: str, channels: int, heads: int, window, batch: int, rounds: int) -> dict:
    """Forward + backward of one GroupSelfAttention layer per map size (interleaved rounds): ms and
    microseconds per query position."""
    from gevit.layers.group_attention import GroupSelfAttention

    torch.manual_seed(0)
    layers = {
        size: GroupSelfAttention(group, channels, channels // 2, channels, heads, window, size).train()
        for size in sizes
    }
    inputs = {size: torch.randn(batch, channels, len(layer.group), size, size) for size, layer in layers.items()}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for r in range(rounds + 1):
        for size, layer in layers.items():
            start = time.perf_counter()
            fwd_bwd(layer, (inputs[size],), needs_input_grad=True)
            if r:
                times[size].append(time.perf_counter() - start)
    out = {}
    for size in sizes:
        ms = median_ms(times[size])
        out[f"{size}x{size}"] = {"ms": ms, "us_per_query_position": round(1000 * ms / (batch * size * size), 2)}
    return out


def stem_layer_cost(overrides: list[str], batch: int, rounds: int) -> dict:
    """Forward + backward of each escnn layer of a hybrid's stem alone (interleaved rounds): name -> ms."""
    from escnn import nn as enn

    torch.manual_seed(0)
    module, _optimizer, cfg = build(overrides)
    stem = module.net.stem.module.train()
    size = batch or cfg.data.batch_size
    x = module.normalize(torch.rand(size, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size))
    inputs, current = [], enn.GeometricTensor(x, stem.in_type)
    with torch.no_grad():
        for name, layer in stem._modules.items():
            inputs.append((f"{name} {type(layer).__name__} {tuple(current.shape)}", layer, current))
            current = layer(current)

    def fwd_bwd_escnn(layer, given):
        # times 1: a non-leaf input, which escnn's in-place ReLU accepts
        out = layer(enn.GeometricTensor(given.tensor.detach().requires_grad_() * 1, given.type)).tensor
        out.backward(torch.randn_like(out))

    times: dict[str, list[float]] = {label: [] for label, _, _ in inputs}
    for r in range(rounds + 1):
        for label, layer, given in inputs:
            start = time.perf_counter()
            fwd_bwd_escnn(layer, given)
            if r:
                times[label].append(time.perf_counter() - start)
    return {"batch": size, "layers_ms": {label: median_ms(t) for label, t in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=0, help="0: each config's own data.batch_size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variant", action="append", help="NAME=OVERRIDES (space-separated); repeatable")
    parser.add_argument("--kernel-sizes", default="", help="comma list of map sizes for the kernel cost (off: '')")
    parser.add_argument("--stem-layers", default="", help="NAME of a --variant (a hybrid): time its stem per layer")
    parser.add_argument("--kernel-config", default="p4,16,2,3", help="group,channels,heads,window of that layer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    report["machine"] = platform.machine()
    variants = {}
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, overrides = spec.partition("=")
        variants[name] = overrides.split()
    if variants:
        report["variants"] = profile(variants, args.batch, args.rounds, args.warmup)
    if args.stem_layers:
        report["stem_layers"] = {args.stem_layers: stem_layer_cost(variants[args.stem_layers], args.batch, args.rounds)}
    if args.kernel_sizes:
        group, channels, heads, window = args.kernel_config.split(",")
        sizes = [int(s) for s in args.kernel_sizes.split(",")]
        report["kernel"] = {
            "config": args.kernel_config,
            "sizes": kernel_cost(sizes, group, int(channels), int(heads), int(window), args.batch or 64, args.rounds),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
