"""GE-ViT latents per layer and how exactly they follow a rotation of the input."""

from __future__ import annotations

import torch

from gevit.groups import Group
from gevit.models.group_transformer import GroupTransformer


def quarter_turn_element(group: Group, turns: int) -> int:
    """The group index of ``turns`` counter-clockwise quarter turns (the group must contain them)."""
    return group.index(((turns % 4) * group.quarter_turn_steps(), 0))


def element_name(group: Group, index: int) -> str:
    """``90°`` or ``mirror·90°`` for element ``index`` (mirror first, then the rotation)."""
    rotation, mirror = group.elements[index]
    angle = f"{rotation * 360 / group.num_rotations:g}°"
    return f"mirror·{angle}" if mirror else angle


def quarter_turns(image: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (4, C, H, W): the image rotated by 0, 90, 180 and 270 degrees counter-clockwise (exact)."""
    return torch.cat([torch.rot90(image, k, dims=(-2, -1)) for k in range(4)])


def latent_equivariance_errors(features: torch.Tensor, group: Group) -> torch.Tensor:
    """Features (4, C, |G|, h, w) of an input rotated by 0/90/180/270 degrees -> (4,) relative errors
    ``max|f(r^k x) - r^k . f(x)| / max|f(x)|``, with ``r^k .`` rotating space and moving the group axis
    ``g -> r^k g`` (:meth:`Group.act_on_feature_map`). Zero for an exactly equivariant layer."""
    upright = features[:1]
    scale = upright.abs().max().clamp_min(1e-30)
    return torch.stack(
        [
            (features[k : k + 1] - group.act_on_feature_map(upright, quarter_turn_element(group, k), group_dim=2))
            .abs()
            .max()
            / scale
            for k in range(4)
        ]
    )


@torch.no_grad()
def layer_latents(net: GroupTransformer, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``image`` (1, C, H, W) (normalised as ``net`` expects) and its three quarter turns through ``net``:
    the lifting and every transformer layer's output, each (4, C_l, |G|, h_l, w_l), and the equivariance
    errors (layers, 4) of :func:`latent_equivariance_errors`. The group must contain the 90° rotation."""
    if not net.group.contains_quarter_turn:
        raise ValueError(
            f"the latents of a GE-ViT over {net.group.name} cannot be compared under 90° rotations: "
            "the group has no 90-degree rotation (use p4, p8, p4m or another group containing it)"
        )
    _, extras = net.forward_features(quarter_turns(image), return_intermediates=True)
    features = extras["features"]
    errors = torch.stack([latent_equivariance_errors(f, net.group) for f in features])
    return features, errors


def most_group_varying_channel(features: torch.Tensor) -> int:
    """The channel of (4, C, |G|, h, w) features whose maps differ most along the group axis (upright
    input), so a figure shows a channel where the group axis carries information."""
    return int(features[0].std(dim=1).mean(dim=(-2, -1)).argmax())
