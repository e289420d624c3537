"""View weights of post-hoc aggregators: how much each of the |G| views of an image counts.

Aggregators with per-view weights (λ-equitune, EquiAttention: ``weighted_views`` on the class) expose
``weights(embeddings (B, |G|, D)) -> (B, |G|)``, positive and summing to one over the views.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from gevit.analysis.latents import element_name, quarter_turn_element
from gevit.posthoc.wrapper import PostHocInvariant


def has_view_weights(net: PostHocInvariant) -> bool:
    """Whether the aggregator of ``net`` weighs the views (has a ``weights(embeddings)`` method)."""
    return net.weighs_views


@torch.no_grad()
def view_weights(net: PostHocInvariant, images: torch.Tensor) -> torch.Tensor:
    """Normalised images (B, C, H, W) -> the aggregator's weights (B, |G|) of their views, in group order."""
    if not has_view_weights(net):
        raise ValueError(f"the {net.aggregator.name} aggregator has no per-view weights")
    _, embeddings = net.view_features(images)
    return net.aggregator.weights(embeddings)


def random_quarter_turns(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image (N, C, H, W) turned by its own random multiple of 90° -> (turned images, turns (N,))."""
    turns = torch.randint(0, 4, (len(images),), generator=torch.Generator().manual_seed(seed))
    turned = torch.stack([torch.rot90(img, int(k), dims=(-2, -1)) for img, k in zip(images, turns, strict=True)])
    return turned, turns


@torch.no_grad()
def view_weight_statistics(
    net: PostHocInvariant,
    images: torch.Tensor,
    labels: torch.Tensor,
    pre_rotate: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> dict:
    """The view weights of images (N, C, H, W) (``preprocess`` turns them into ``net``'s input, e.g. the
    LightningModule's normalisation), summarised as plain numbers.

    With ``pre_rotate`` each image is first turned by a random multiple of 90 degrees (``seed``), so the
    upright view is a different one per image. Returns: per view (in group order) the fraction of images it
    wins (largest weight) and its mean weight; per transformation relative to the upright digit (view
    element ∘ pre-rotation) the same; the fraction of images whose winning view is the upright one; the
    accuracy; and per image its weights, label, prediction and pre-rotation.
    """
    group = net.group
    if pre_rotate and not group.contains_quarter_turn:
        raise ValueError(
            f"the views of {group.name} cannot be compared under random 90° pre-rotations: the group "
            "has no 90-degree rotation; run without pre-rotation"
        )
    preprocess = preprocess or (lambda x: x)
    if pre_rotate:
        turned, turns = random_quarter_turns(images, seed)
    else:
        turned, turns = images, torch.zeros(len(images), dtype=torch.long)
    weights, predicted = [], []
    for chunk in turned.split(batch_size):
        inputs = preprocess(chunk)
        weights.append(view_weights(net, inputs))
        predicted.append(net(inputs).argmax(-1))
    weights, predicted = torch.cat(weights).double(), torch.cat(predicted)

    order = group.order
    pre_elements = [quarter_turn_element(group, int(k)) if pre_rotate else 0 for k in turns]
    # view j of the turned image shows the upright image transformed by g_j ∘ u
    relative = torch.tensor([[group.compose(j, u) for j in range(order)] for u in pre_elements])
    upright_view = torch.tensor([group.inverse(u) for u in pre_elements])
    winners = weights.argmax(1)
    rows = torch.arange(len(images))
    relative_weights = torch.zeros_like(weights).scatter_(
        1, relative, weights
    )  # column r: element r relative to upright
    return {
        "aggregator": net.aggregator.name,
        "group": group.name,
        "num_images": len(images),
        "pre_rotate": pre_rotate,
        "seed": seed,
        "view_elements": [element_name(group, j) for j in range(order)],
        "uniform_weight": 1.0 / order,
        "win_fraction": [float((winners == j).double().mean()) for j in range(order)],
        "mean_weight": weights.mean(0).tolist(),
        "relative_win_fraction": [float((relative[rows, winners] == r).double().mean()) for r in range(order)],
        "relative_mean_weight": relative_weights.mean(0).tolist(),
        "upright_win_fraction": float((winners == upright_view).double().mean()),
        "upright_mean_weight": float(weights[rows, upright_view].mean()),
        # 1/|G| when the weights are uniform (then "winning" is a tie broken by group order)
        "mean_winning_weight": float(weights.max(1).values.mean()),
        "accuracy": float((predicted == labels).double().mean()),
        "per_image": [
            {
                "label": int(labels[i]),
                "predicted": int(predicted[i]),
                "pre_rotation_deg": 90 * int(turns[i]),
                "upright_view": int(upright_view[i]),
                "weights": weights[i].tolist(),
            }
            for i in range(len(images))
        ],
    }
