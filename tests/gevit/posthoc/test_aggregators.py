"""The post-hoc aggregators (gevit/posthoc/aggregators/): each method declares itself and follows its formula;
the learned canonicalizer's orientation logits and training signals."""

from __future__ import annotations

import functools

import pytest
import torch

from gevit.groups import get_group
from gevit.posthoc import (
    timm_backbone,
)
from tests.support.posthoc import CATALOG, MNIST, aggregator, make, regimes_of


# ---- aggregators ------------------------------------------------------------------------------------------
def test_every_method_declares_itself_and_documents_its_formula():
    for name, cls in CATALOG.items():
        assert cls.level in ("embedding", "logits", "spatial", "input"), name
        assert set(cls.summary) == {"aggregated", "weights", "normalisation", "estimator", "difference"}, name
        assert "=" in cls.__doc__ and "(B, |G|" in cls.__doc__, name
        model = make(name, "c4", regimes_of(name)[0])
        assert model.net.aggregator.learned == any(True for _ in model.net.aggregator.parameters()), name


def test_lambda_weights_are_positive_and_normalised():
    embeddings = torch.randn(4, 8, 6)
    for normalization in ("softmax", "sum"):
        lam = aggregator("lambda", normalization=normalization)(embed_dim=6)
        assert torch.allclose(lam(embeddings), embeddings.mean(1), atol=1e-6)  # untrained = mean
        for p in lam.parameters():
            p.data.normal_(0, 0.5)
        weights = lam.weights(embeddings)
        assert (weights > 0).all() and torch.allclose(weights.sum(1), torch.ones(4))
        assert torch.allclose(lam(embeddings), (weights.unsqueeze(-1) * embeddings).sum(1), atol=1e-6)


def test_spatial_lambda_weighs_the_aligned_maps():
    backbone = functools.partial(timm_backbone, model_name="resnet18")
    model = make("lambda_spatial", "c4", "aggregator_only", backbone=backbone, data=dict(MNIST, image_size=64)).eval()
    assert model.net.aggregator.level == "spatial"
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features, embeddings = model.net.view_features(model.normalize(x))
        weights = model.net.aggregator.weights(embeddings)
        combined = (weights[:, :, None, None, None] * model.net.views.inverse_on_maps(features)).sum(1)
        assert torch.allclose(model(x), model.net.backbone.forward_head(combined), atol=1e-5)
    assert make("lambda_spatial", "c4", "aggregator_only").net.aggregator.level == "embedding"  # a ViT: no maps


@pytest.mark.parametrize("name", ["transformer", "equiattention"])
def test_untrained_attention_aggregators_start_as_the_mean(name):
    embeddings = torch.randn(3, 4, 8)
    module = aggregator(name)(embed_dim=8).eval()
    assert torch.allclose(module(embeddings), embeddings.mean(1), atol=1e-6)


def test_probability_aggregators_follow_their_formulas():
    logits = torch.randn(5, 16, 10) * 3
    probs = logits.softmax(-1)
    assert torch.allclose(aggregator("mean_probs")()(logits).exp(), probs.mean(1), atol=1e-6)
    assert torch.allclose(aggregator("tta")()(logits), logits.mean(1))
    most_probable = aggregator("most_probable", temperature=1.0)()(logits)
    product = probs.double().prod(1)
    assert torch.allclose(most_probable.softmax(-1).double(), product / product.sum(-1, keepdim=True), atol=1e-5)
    per_class = aggregator("most_certain")()(logits)
    assert torch.equal(per_class, logits.gather(1, probs.argmax(1, keepdim=True)).squeeze(1))
    one_view = aggregator("most_certain", per_class=False)()(logits)
    best = probs.amax(-1).argmax(1)
    assert torch.equal(one_view, logits[torch.arange(5), best])


def test_most_probable_temperature_defaults_to_half_the_group_order():
    for group, temperature in [("c4", 2.0), ("d4", 4.0), ("c16", 8.0), ("flip", 1.0)]:
        assert make("most_probable", group).net.aggregator.temperature == temperature
    logits = torch.randn(3, 16, 10)
    default = aggregator("most_probable")(group=get_group("c16"))(logits)
    assert torch.allclose(default, (logits / 8).log_softmax(-1).sum(1))


def test_most_probable_stays_finite_where_the_product_underflows():
    logits = torch.randn(4, 16, 10) * 60  # per-view probabilities ~1e-40: their product is 0 in float32
    assert (logits.softmax(-1).prod(1) == 0).all()
    logits.requires_grad_(True)
    out = aggregator("most_probable", temperature=1.0)()(logits)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()


def test_equizero_picks_the_least_uncertain_view_with_a_straight_through_gradient():
    logits = torch.randn(3, 4, 10)
    logits[:, 2] *= 20  # the most confident view
    logits.requires_grad_(True)
    for proxy in ("entropy", "max_prob"):
        module = aggregator("equizero", proxy=proxy)()
        with torch.no_grad():
            assert torch.equal(module(logits), logits[:, 2])
        out = module(logits)
        assert torch.allclose(out, logits[:, 2], atol=1e-5)
        logits.grad = None
        out.sum().backward()
        assert torch.allclose(logits.grad, torch.full_like(logits, 1 / 4))  # through the mean of the views


# ---- learned canonicalization ---------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["c4", "flip", "d4"])
def test_orientation_logits_permute_as_the_regular_representation(group):
    """o(g x)[g h] = o(x)[h] in the element indexing of gevit.groups, exactly (float64)."""
    from gevit.posthoc import OrientationNet

    g = get_group(group)
    torch.manual_seed(0)
    net = OrientationNet(g, in_channels=1, width=2, depth=2, kernel_size=3).double().eval()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        reference = net(x)
        for u in range(g.order):
            moved = net(g.act_on_images(x, u))
            assert torch.allclose(moved[:, g.cayley_table[u]], reference, atol=1e-6), (group, u)


def test_canonicalization_trains_through_its_estimators_and_the_prior(images):
    for estimator in ("straight_through", "gumbel"):
        model = make("canonicalization", "c4", "aggregator_only", estimator=estimator).train()
        loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([1, 2, 3]))
        loss.backward()
        grads = [p.grad for p in model.net.aggregator.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), estimator
    # the prior alone pushes the orientation of (upright) training images to the identity
    model = make("canonicalization", "c4", "aggregator_only", prior_weight=1.0, width=4, depth=3, kernel_size=5).train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.05)
    upright = images[..., 7:21, 7:21]  # the orientation net takes any size; small is fast
    start = model.net.orientation_logits(upright).softmax(-1)[:, 0].mean().item()
    for _ in range(30):
        optimizer.zero_grad()
        model.net.aggregator.prior_loss(model.net.orientation_logits(upright)).backward()
        optimizer.step()
    model.eval()
    assert model.net.orientation_logits(upright).softmax(-1)[:, 0].mean().item() > max(start, 0.5)
    assert model.canonicalizer_accuracy(upright, seed=0) > 0.5
