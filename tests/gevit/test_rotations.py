import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from gevit.robustness import RotationRobustness, default_angles, evaluate_rotation_robustness
from gevit.rotations import rotate


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, -1])
def test_quarter_turns_are_exact_rot90(k):
    x = torch.rand(3, 2, 9, 9)
    assert torch.equal(rotate(x, 90.0 * k), torch.rot90(x, k, dims=(-2, -1)))


def test_interpolated_rotation_agrees_with_rot90_and_torchvision():
    x = torch.rand(2, 1, 28, 28)
    # the grid-sample path at exactly 90 degrees (tensor angle forces it) matches rot90
    assert torch.allclose(rotate(x, torch.tensor([90.0, 90.0])), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    # same counter-clockwise convention as torchvision
    ours = rotate(x, 30.0)
    theirs = TF.rotate(x, 30.0, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_per_image_angles():
    x = torch.rand(2, 1, 16, 16)
    both = rotate(x, torch.tensor([0.0, 45.0]))
    assert torch.allclose(both[0], x[0], atol=1e-5)
    assert torch.allclose(both[1:], rotate(x[1:], 45.0), atol=1e-6)


def test_rotate_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        rotate(torch.rand(28, 28), 10.0)


def test_default_angles():
    assert default_angles() == [15.0 * i for i in range(24)]


class InvariantToy(torch.nn.Module):
    """Logits from a radial profile of the image: exactly C4-invariant on square images."""

    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), x[..., 10:18, 10:18].mean((1, 2, 3))], -1)


def test_robustness_of_an_invariant_model():
    x = torch.rand(16, 1, 28, 28)
    y = torch.zeros(16, dtype=torch.long)
    res = evaluate_rotation_robustness(InvariantToy(), [(x, y)], angles=[0, 45, 90, 180, 270])
    assert res["angles"] == [0.0, 45.0, 90.0, 180.0, 270.0]
    assert res["invariance_error_rot90"] < 1e-6
    assert res["invariance_error"][1] > 1e-4  # 45 degrees is measured, not exact
    assert res["num_samples"] == 16


def test_robustness_counts_and_state_round_trip():
    meter = RotationRobustness([0, 90])
    model = lambda images: images.flatten(1)[:, :3]  # noqa: E731  (not invariant)
    x, y = torch.rand(5, 1, 4, 4), torch.randint(3, (5,))
    meter.update(model, x, y)
    state = meter.state_tensor()
    other = RotationRobustness([0, 90])
    other.load_state_tensor(state * 2)
    assert other.result()["num_samples"] == 10
    assert math.isclose(other.result()["accuracy"][0], meter.result()["accuracy"][0])
    assert meter.result()["invariance_error_rot90"] > 0
