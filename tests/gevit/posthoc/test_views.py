"""The views of the post-hoc wrappers (gevit/posthoc/views.py): the group's transformed copies of an image, the
mirror, normalisation, the circular mask and the inverse action on feature maps."""

from __future__ import annotations

import pytest
import torch

from gevit.posthoc import (
    GroupViews,
    disk_mask,
)
from tests.support.posthoc import make, worst_invariance_error


# ---- views ----------------------------------------------------------------------------------------------
def test_flip_is_a_true_mirror_and_d4_holds_the_eight_symmetries(images):
    views = GroupViews("flip")(images)
    assert torch.equal(views[:, 1], images.flip(-1))
    assert not torch.equal(views[:, 1], torch.rot90(images, 2, (-2, -1)))
    d4 = GroupViews("d4")(images)
    expected = [torch.rot90(images, k, (-2, -1)) for k in range(4)] + [
        torch.rot90(images.flip(-1), k, (-2, -1)) for k in range(4)
    ]
    for i, view in enumerate(expected):
        assert torch.equal(d4[:, i], view)


def test_views_of_normalised_images_are_normalised_views_of_raw_images(images):
    mean, std = 0.1307, 0.3081
    for padding in ("zeros", "circular_mask"):
        raw = GroupViews("c8", padding=padding)(images)
        normalised = GroupViews("c8", padding=padding, background=[-mean / std])((images - mean) / std)
        assert torch.allclose(normalised, (raw - mean) / std, atol=1e-5)


def test_circular_mask_keeps_only_the_inscribed_disk(images):
    mask = disk_mask(28, 28)
    assert torch.equal(mask, torch.rot90(mask, 1)) and torch.equal(mask, mask.flip(-1))
    views = GroupViews("c16", padding="circular_mask")(images)
    assert views[..., mask == 0].abs().max() == 0
    model = make("mean", "c4")
    model.net.views.padding = "circular_mask"
    assert worst_invariance_error(model.eval(), images, "c4") < 1e-5
    with pytest.raises(ValueError, match="padding must be one of"):
        GroupViews("c4", padding="reflection")


def test_spatial_inverse_action_aligns_the_feature_maps():
    group_views = GroupViews("d4")
    maps = torch.rand(2, 3, 4, 4)
    aligned = group_views.inverse_on_maps(group_views(maps))
    assert torch.equal(aligned, maps.unsqueeze(1).expand_as(aligned))
