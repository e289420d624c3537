"""The post-hoc backbones (gevit/posthoc/backbones.py): timm, torchvision and the peer ViT from local weights only,
attention-pooled read-outs made invariant, wrong class counts refused."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from gevit.groups import get_group
from gevit.posthoc import (
    check_backbone,
    resnet_backbone,
    timm_backbone,
)
from gevit.posthoc.backbones import TimmStyleBackbone, TorchvisionResNetBackbone
from tests.support.posthoc import MNIST, TINY_BACKBONE, generators, make, relative_error


# ---- backbones -----------------------------------------------------------------------------------------
def test_timm_backbones_with_local_weights_only(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = timm_backbone(
        num_classes=10, in_channels=3, image_size=32, model_name="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    assert isinstance(backbone, TimmStyleBackbone) and backbone.spatial_features and backbone.embed_dim == 512
    assert backbone.invariant_pooling  # global average pooling
    assert torch.equal(backbone.model.conv1.weight, source.conv1.weight)
    assert backbone.head.out_features == 10
    vit = timm_backbone(
        num_classes=10,
        in_channels=1,
        image_size=28,
        model_name="vit_tiny_patch16_224",
        model_kwargs={"img_size": 28, "patch_size": 7, "depth": 1},
    )
    assert not vit.spatial_features and vit.forward_head(
        vit.forward_features(torch.rand(2, 1, 28, 28)), pre_logits=True
    ).shape == (2, 192)
    with pytest.raises(FileNotFoundError, match="timm weights file"):
        timm_backbone(num_classes=10, in_channels=3, image_size=32, model_name="resnet18", weights="/nope.pth")


def test_attention_pooled_timm_clip_resnet_is_recognised_and_made_invariant():
    """timm's resnet50_clip (attention pooling with a positional embedding, CLIP RN50): its pooling is not
    trusted, so spatial methods read out symmetrised; float64, random weights, rot90 and a mirror."""
    backbone = timm_backbone(
        num_classes=10, in_channels=1, image_size=64, model_name="resnet50_clip", model_kwargs={"img_size": 64}
    )
    assert backbone.spatial_features and not backbone.invariant_pooling
    x = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = make("equiattention", "d4", "aggregator_only", backbone=backbone, data=dict(MNIST, image_size=64))
    model = model.double().eval()
    assert model.net.aggregator.level == "spatial" and model.net.symmetrize_pooling
    with torch.no_grad():
        reference = model(x)
        for index in generators("d4"):
            assert relative_error(model(get_group("d4").act_on_images(x, index)), reference) < 1e-12, index


def test_torchvision_resnets_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone = resnet_backbone(
        num_classes=2, in_channels=3, image_size=64, arch="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    assert isinstance(backbone, TorchvisionResNetBackbone) and backbone.embed_dim == 512
    assert torch.equal(backbone.model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert backbone.head.out_features == 2
    gray = resnet_backbone(
        num_classes=10, in_channels=1, image_size=64, arch="resnet18", weights=str(tmp_path / "resnet18.pth")
    )
    assert torch.allclose(gray.model.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    x = torch.rand(2, 3, 64, 64)
    features = backbone.eval().forward_features(x)
    assert features.shape == (2, 512, 2, 2)
    assert torch.allclose(backbone.forward_head(features), backbone.model.eval()(x), atol=1e-5)
    resnet50 = resnet_backbone(num_classes=2, in_channels=3, image_size=96)  # the default arch
    assert resnet50.embed_dim == 2048 and resnet50.forward_features(torch.rand(1, 3, 96, 96)).shape == (1, 2048, 3, 3)
    with pytest.raises(ValueError, match="not a resnet50 state_dict"):
        resnet_backbone(num_classes=2, in_channels=3, image_size=64, weights=str(tmp_path / "resnet18.pth"))


def test_peer_vit_backbone_loads_the_original_checkpoint(shared_data):
    from gevit.models import VisionTransformer, convert_peer_vit_state_dict
    from gevit.posthoc import peer_vit_backbone

    path = shared_data / "checkpoints" / "peer_vit_upright_mnist.pt"
    backbone = peer_vit_backbone(num_classes=10, in_channels=1, image_size=28, ckpt_path=str(path)).eval()
    reference = VisionTransformer().eval()
    reference.load_state_dict(convert_peer_vit_state_dict(torch.load(path, map_location="cpu", weights_only=True)))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(backbone(x), reference(x))


def test_a_backbone_with_the_wrong_number_of_classes_is_refused():
    with pytest.raises(ValueError, match="data has 2 classes"):
        check_backbone(TINY_BACKBONE(num_classes=10, in_channels=1, image_size=28), 2, 1, 28)
