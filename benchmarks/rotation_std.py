"""The EqCvT paper's rotation-robustness figure: the standard deviation of the logits over 8 rotations by 45 degrees.

    python -m benchmarks.rotation_std model=eqcvt data=lensing                      # random init, random images
    python -m benchmarks.rotation_std --source val model=cvt data=rotmnist_mini     # random init, real digits
    python -m benchmarks.rotation_std --ckpt RUN/checkpoints/last.ckpt --source val data=rotmnist_mini

For every image x the model (eval mode) gives the logits of R_k x, k = 0..7, where R_k rotates by 45 k degrees
counter-clockwise (``gevit.rotations.rotate``: exact ``torch.rot90`` for multiples of 90, bilinear with zero
padding otherwise); ``--upsample 3`` rotates at 3x the resolution and resizes back (for every angle, 0
included), the original protocol (129 -> 387 -> rotate -> 129, PIL bilinear). The figure is the mean over images and logits of the standard deviation over the 8
rotations (``torch.std``, unbiased); the published values are 0.48 (EqCvT) and 0.96 (a 2-stage CvT) on the
lensing data. Since it scales with the logits, the mean absolute logit of the unrotated images is reported
beside it, and so is the invariance error mean ||f(R x) - f(x)|| / ||f(x)|| over the three quarter turns.

The model comes from the Hydra overrides (built as train.py builds it, random init, ``--seed``) or, with
``--ckpt``, from a checkpoint written by train.py (its stored model config and weights). Images are uniform
random (``--source random``, at the data config's shape; no data files needed) or the first ``--images``
images of the data module's train or val split (never test). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch.nn.functional as F

ANGLES = [45.0 * k for k in range(8)]


def compose(overrides):
    from runkit.config import compose as compose_config

    return compose_config(overrides)


def build_model(cfg, ckpt):
    import hydra

    if ckpt is None:
        return hydra.utils.instantiate(cfg.model)
    from runkit.checkpoint_loading import load_run

    return load_run(ckpt).module  # weights_only; old checkpoints' configs translated (runkit.legacy)


def load_images(cfg, source, count, seed):
    shape = (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    if source == "random":
        return torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed))
    import hydra

    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_set if source == "train" else datamodule.val_set
    count = min(count, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)])


def rotated(images, angle, upsample):
    """``images`` rotated by ``angle`` degrees, at ``upsample`` times the resolution when ``upsample > 1``."""
    from gevit.rotations import rotate

    if upsample == 1:
        return rotate(images, angle)
    size = images.shape[-2:]
    large = F.interpolate(images, scale_factor=upsample, mode="bilinear", align_corners=False)
    return F.interpolate(rotate(large, angle), size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def rotation_statistics(model, images, batch_size, upsample=1):
    """Mean over images of the per-logit std over the 8 rotations; mean |logit|; rot90 invariance error."""
    stds, scales, errors = [], [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        logits = torch.stack([model(rotated(x, angle, upsample)) for angle in ANGLES])  # (8, B, K)
        stds.append(logits.std(dim=0).mean(dim=-1))
        scales.append(logits[0].abs().mean(dim=-1))
        quarter = logits[2::2]  # 90, 180, 270 degrees
        errors.append(((quarter - logits[0]).norm(dim=-1) / logits[0].norm(dim=-1).clamp_min(1e-12)).mean(dim=0))
    return float(torch.cat(stds).mean()), float(torch.cat(scales).mean()), float(torch.cat(errors).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a checkpoint written by train.py (else: random init)")
    parser.add_argument("--source", choices=("random", "train", "val"), default="random")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--upsample", type=int, default=1, help="rotate at this many times the resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = compose(args.overrides)
    model = build_model(cfg, args.ckpt).eval()
    images = load_images(cfg, args.source, args.images, args.seed)
    std, scale, error = rotation_statistics(model, images, args.batch, args.upsample)
    net = getattr(model, "net", model)
    print(
        json.dumps(
            {
                "model": f"{type(net).__module__}.{type(net).__name__}",
                "ckpt": args.ckpt,
                "overrides": args.overrides,
                "source": args.source,
                "upsample": args.upsample,
                "images": len(images),
                "params": sum(p.numel() for p in model.parameters()),
                "rotation_logit_std": round(std, 4),
                "logit_abs_mean": round(scale, 4),
                "invariance_error_rot90": error,
                "torch": torch.__version__,
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
