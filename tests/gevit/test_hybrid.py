"""Hybrid ViT (invariant stem -> GE-ViT): exact rot90 (and flip) invariance at the data sets' sizes for both
stems, mode-independent checkpoints, parameter counts, geometry checks."""

from __future__ import annotations

import pytest
import torch

import gevit
from gevit.models.hybrid import HybridViT, SymmetricPatchEmbed, attention_pairs
from lightning_modules import ImageClassifier

# Small GE-ViT part so the file stays fast; the stems and geometry are the experiments' ones.
SMALL = dict(num_channels=8, num_heads=2, block_sizes=[2], attention_window=3)
CASES = {  # name -> (group, image_size, channels, kwargs)
    "rotmnist-escnn": ("p4", 28, 1, dict(stem="escnn")),
    "rotmnist-patch": ("p4", 28, 1, dict(stem="patch_embed", embed_patch_size=4)),
    "pcam-escnn": (
        "p4",
        96,
        3,
        dict(stem="escnn", stem_channels=[4, 8, 8], stem_kernel_size=[5, 3, 3], block_sizes=[1, 1]),
    ),  # 12x12, max-pool 12 -> 6
    "pcam-patch": ("p4", 96, 3, dict(stem="patch_embed", embed_patch_size=16)),  # 6x6
    "rotmnist-escnn-p4m": ("p4m", 28, 1, dict(stem="escnn", downsample="antialiased")),
    "rotmnist-patch-p4m": ("p4m", 28, 1, dict(stem="patch_embed", embed_patch_size=4)),
    "pcam-escnn-p4m": (
        "p4m",
        96,
        3,
        dict(stem="escnn", stem_channels=[4, 8, 8, 8], stem_kernel_size=3, downsample="max", block_sizes=[1]),
    ),  # 6x6
    "pcam-patch-p4m": ("p4m", 96, 3, dict(stem="patch_embed", embed_patch_size=8, block_sizes=[1, 1])),
    # the stem's regular fields handed to GE-ViT's group layers as they are (no group pooling, no lifting)
    "rotmnist-regular": ("p4", 28, 1, dict(handover="regular", stem_channels=[4, 8], stem_depth=[1, 2])),
    "rotmnist-regular-p4m": ("p4m", 28, 1, dict(handover="regular", stem_channels=[2, 4], stem_depth=[2, 1])),
    "pcam-regular-p4m": (
        "p4m",
        96,
        3,
        dict(handover="regular", stem_channels=[2, 4, 4], stem_kernel_size=3, downsample="max", block_sizes=[1]),
    ),  # 12x12
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def relative_change(model, x, transform) -> float:
    model.eval()
    with torch.no_grad():
        reference, changed = model(x), model(transform(x))
    return float(((changed - reference).norm(dim=-1) / reference.norm(dim=-1)).max())


def build(name: str) -> HybridViT:
    group, size, channels, kwargs = CASES[name]
    torch.manual_seed(0)
    return HybridViT(group=group, image_size=size, in_channels=channels, num_classes=10, **{**SMALL, **kwargs})


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_are_exactly_invariant(name):
    group, size, channels, _ = CASES[name]
    model = build(name)
    assert model.exactly_invariant
    x = torch.rand(2, channels, size, size)
    transforms = [lambda t, k=k: torch.rot90(t, k, dims=(-2, -1)) for k in (1, 2, 3)]
    if group == "p4m":
        transforms += [lambda t: torch.flip(t, dims=(-1,)), lambda t: torch.flip(torch.rot90(t, 1, (-2, -1)), (-2,))]
    errors = [relative_change(model, x, t) for t in transforms]
    print(
        f"{name}: {n_params(model)} parameters, artificial image {model.artificial_size}x{model.artificial_size}, "
        f"max relative error {max(errors):.1e}"
    )
    assert max(errors) < 1e-5, errors


def test_patch_embedding_is_patchwise_invariant():
    embed = SymmetricPatchEmbed(3, 5, 4, mirror=True)
    patch = torch.rand(1, 3, 4, 4)
    out = embed(patch)
    for t in (torch.rot90(patch, 1, (-2, -1)), torch.flip(patch, (-1,))):
        torch.testing.assert_close(embed(t), out, rtol=1e-5, atol=1e-6)
    # equals the shared Linear averaged over the patch's orbit
    orbit = [torch.rot90(patch, r, (-2, -1)) for r in range(4)]
    orbit += [torch.flip(p, (-1,)) for p in orbit]
    averaged = torch.stack([embed.proj(p.flatten(1)) for p in orbit]).mean(0)
    torch.testing.assert_close(out.flatten(1), averaged, rtol=1e-5, atol=1e-6)


def test_geometry_that_would_break_invariance_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        HybridViT(stem="patch_embed", embed_patch_size=5, **SMALL)
    with pytest.raises(ValueError, match="even maps"):
        HybridViT(stem_channels=[2, 2, 2], stem_kernel_size=3, **SMALL)  # 28 -> 14 -> 7 -> (odd) refused
    for handover in ("scalar", "regular"):  # a max-pool of the odd 7x7 map is flagged, as GE-ViT flags it
        assert not HybridViT(handover=handover, **{**SMALL, "block_sizes": [1, 1]}).exactly_invariant
    with pytest.raises(ValueError, match="handover"):
        HybridViT(handover="pooled", **SMALL)
    assert HybridViT(stem="patch_embed", handover="regular", **SMALL).handover == "scalar"  # an escnn option


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_regular_handover_is_equivariant_and_feeds_the_group_layers(group):
    """The stem's regular fields transform as GE-ViT's group features (Group.act_on_feature_map), which is
    why they can skip the lifting layer; the GE-ViT part then has no lifting layer and takes (B, D, |G|, s, s)."""
    torch.manual_seed(0)
    model = HybridViT(group=group, handover="regular", stem_channels=[2, 3], **SMALL).eval()
    g = model.vit.group
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        fields = model.artificial_image(x)
        assert fields.shape == (2, 3, len(g), 7, 7)
        for u in range(len(g)):
            transformed = model.artificial_image(g.act_on_images(x, u))
            torch.testing.assert_close(transformed, g.act_on_feature_map(fields, u), rtol=1e-4, atol=1e-5)
    assert model.vit.lifting is None and model.vit.transformer[0].attention.in_channels == 3
    with pytest.raises(ValueError, match=r"\(B, 3, %d, H, W\)" % len(g)):
        model.vit(torch.rand(2, 3, 7, 7))


def test_default_models_and_parameter_counts():
    torch.manual_seed(0)
    rotmnist = gevit.models.HybridViT(group="p4")
    patch = gevit.models.HybridViT(group="p4", stem="patch_embed")
    reference = gevit.models.GroupTransformer(group="p4")
    counts = {"hybrid-escnn": n_params(rotmnist), "hybrid-patch_embed": n_params(patch), "gevit": n_params(reference)}
    print("parameters:", counts, "attention pairs:", attention_pairs(rotmnist), "vs", attention_pairs(reference))
    assert rotmnist.artificial_size == patch.artificial_size == 7
    assert attention_pairs(reference) > 10 * attention_pairs(rotmnist)  # 641,424 vs 57,188 (11.2x)
    assert rotmnist(torch.rand(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("stem, handover", [("escnn", "scalar"), ("patch_embed", "scalar"), ("escnn", "regular")])
def test_checkpoint_round_trip_across_modes(stem, handover):
    def classifier() -> ImageClassifier:
        net = HybridViT(
            num_classes=10,
            in_channels=1,
            image_size=28,
            stem=stem,
            stem_channels=[2, 4],
            stem_kernel_size=3,
            handover=handover,
            **SMALL,
        )
        return ImageClassifier(
            net=net, num_classes=10, in_channels=1, image_size=28, input_mean=[0.1307], input_std=[0.3081]
        )

    torch.manual_seed(0)
    source = classifier()
    x = torch.rand(2, 1, 28, 28)
    source.train()
    source(x)  # move the BatchNorm statistics
    source.eval()
    expected = source(x).detach()
    eval_state = {k: v.clone() for k, v in source.state_dict().items()}
    source.train()
    train_state = {k: v.clone() for k, v in source.state_dict().items()}
    assert eval_state.keys() == train_state.keys()
    for state in (eval_state, train_state):
        for mode in ("train", "eval"):
            torch.manual_seed(1)
            target = classifier()
            target.train(mode == "train")
            target.load_state_dict(state, strict=True)
            target.eval()
            torch.testing.assert_close(target(x), expected, rtol=1e-6, atol=1e-6)


def test_patch_stem_loads_state_dicts_of_its_earlier_layer_norm():
    """The patch stem's LayerNorm is the shared gevit.layers.ChannelLayerNorm; state dicts saved when the
    hybrid had its own copy (keys stem_norm.norm.*) still load."""
    torch.manual_seed(0)
    source = HybridViT(stem="patch_embed", **SMALL)
    old_state = {key.replace("stem_norm.", "stem_norm.norm."): value for key, value in source.state_dict().items()}
    target = HybridViT(stem="patch_embed", **SMALL)
    target.load_state_dict(old_state, strict=True)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))
