"""escnn helpers: mode-independent state dicts (also through Lightning checkpoints) and export to plain torch."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from escnn import gspaces
from escnn import nn as enn
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from gevit.escnn_utils import GeometricWrapper, deepcopy_module, export_for_inference, make_state_dict_mode_independent
from gevit.models import EqCvT
from lightning_modules import ImageClassifier

SIZE = 29
SMALL = dict(image_size=SIZE, regular_fields=4, embed_dim=8, depth=1, num_heads=2, head_dim=8, mlp_hidden_dim=16)


def small_eqcvt(seed: int = 0, **kwargs) -> EqCvT:
    torch.manual_seed(seed)
    return EqCvT(**{**SMALL, **kwargs})


def trained(model: torch.nn.Module) -> torch.nn.Module:
    """A few SGD steps, so weights and BatchNorm statistics differ from the initial ones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.rand(4, 1, SIZE, SIZE)), torch.tensor([0, 1, 1, 0])).backward()
        optimizer.step()
    return model


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def source():
    """A trained model and its eval-mode logits on fixed inputs."""
    model = trained(small_eqcvt())
    x = torch.rand(3, 1, SIZE, SIZE)
    return model, x, logits(model, x)


def cached_keys(state_dict: dict) -> set:
    return {
        k
        for k in state_dict
        if k.startswith("equivariant.module.0.") and k.rsplit(".", 1)[-1] in ("filter", "expanded_bias")
    }


def test_state_dict_keys_do_not_depend_on_the_mode(source):
    model, _, _ = source
    fresh = small_eqcvt()  # a fresh escnn conv holds an all-zero `filter` buffer
    model.eval()
    eval_keys = set(model.state_dict())
    model.train()
    assert eval_keys == set(model.state_dict()) == set(fresh.state_dict())
    assert not cached_keys(eval_keys)


@pytest.mark.parametrize(
    "save_mode, load_mode", [("eval", "train"), ("train", "eval"), ("eval", "eval"), ("train", "train")]
)
def test_save_in_one_mode_load_in_the_other(source, save_mode, load_mode):
    model, x, expected = source
    model.train(save_mode == "train")
    state = model.state_dict()
    target = small_eqcvt(seed=1)
    target.train(load_mode == "train")  # in eval mode the target already caches its own (other) filter
    target.load_state_dict(state, strict=True)
    torch.testing.assert_close(logits(target, x), expected, rtol=0, atol=0)


def test_old_checkpoints_with_cached_buffers_still_load(source):
    model, x, expected = source
    model.eval()
    conv = model.equivariant.module[0]
    state = dict(model.state_dict())
    state["equivariant.module.0.filter"] = conv.filter.detach().clone()  # as escnn alone would have saved it
    for mode in (True, False):
        target = small_eqcvt(seed=2).train(mode)
        assert not target.load_state_dict(state, strict=True).unexpected_keys
        torch.testing.assert_close(logits(target, x), expected, rtol=0, atol=0)


def test_bias_and_linear_caches_are_handled():
    """``expanded_bias`` (R2Conv with bias) and escnn.nn.Linear's ``matrix`` follow the same rules."""
    gspace = gspaces.rot2dOnR2(4)
    in_type = enn.FieldType(gspace, [gspace.trivial_repr])
    hidden = enn.FieldType(gspace, 2 * [gspace.regular_repr])
    linear_type = enn.FieldType(
        gspaces.no_base_space(gspace.fibergroup), 2 * [gspace.fibergroup.regular_representation]
    )

    def build(seed):
        torch.manual_seed(seed)
        conv = GeometricWrapper(enn.R2Conv(in_type, hidden, 3, padding=1, bias=True))
        linear = make_state_dict_mode_independent(enn.Linear(linear_type, linear_type, bias=True))
        return torch.nn.ModuleDict({"conv": conv, "linear": linear})

    def run(modules, x):
        modules.eval()
        with torch.no_grad():
            pooled = modules["conv"](x).mean(dim=(-2, -1))
            return modules["linear"](enn.GeometricTensor(pooled, linear_type)).tensor

    original = build(0)
    torch.nn.init.normal_(original["conv"].module.bias)
    x = torch.rand(2, 1, 7, 7)
    expected = run(original, x)
    assert not {k for k in original.state_dict() if k.endswith(("expanded_bias", "matrix", ".filter"))}
    target = build(1).eval()
    target.load_state_dict(original.state_dict(), strict=True)
    torch.testing.assert_close(run(target, x), expected, rtol=0, atol=0)


def test_idempotent():
    model = small_eqcvt()
    conv = model.equivariant.module[0]
    hooks = len(conv._state_dict_hooks) + len(conv._load_state_dict_pre_hooks)
    make_state_dict_mode_independent(model)
    assert len(conv._state_dict_hooks) + len(conv._load_state_dict_pre_hooks) == hooks


def test_lightning_checkpoint_saved_at_validation_end(tmp_path):
    """A real checkpoint file written by ModelCheckpoint (at validation end) loads strictly in either mode."""
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(8, 1, SIZE, SIZE), torch.tensor([0, 1] * 4))
    module = ImageClassifier(
        net=small_eqcvt(),
        num_classes=2,
        in_channels=1,
        image_size=SIZE,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/acc", mode="max")
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))
    x = torch.rand(3, 1, SIZE, SIZE)
    expected = logits(module, x)
    state = torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"]
    assert not cached_keys({k.removeprefix("net.") for k in state})
    for mode in (True, False):
        fresh = ImageClassifier(net=small_eqcvt(seed=3), num_classes=2, in_channels=1, image_size=SIZE).train(mode)
        fresh.load_state_dict(state, strict=True)
        torch.testing.assert_close(logits(fresh, x), expected, rtol=0, atol=0)
    # Lightning's own restore path (trainer.validate/test with ckpt_path) loads it too.
    fresh = ImageClassifier(net=small_eqcvt(seed=4), num_classes=2, in_channels=1, image_size=SIZE)
    trainer.validate(
        fresh, DataLoader(data, batch_size=8), ckpt_path=checkpoint.best_model_path, verbose=False, weights_only=False
    )
    torch.testing.assert_close(logits(fresh, x), expected, rtol=0, atol=0)


def test_export_for_inference_gives_the_same_logits(source):
    model, x, expected = source
    model.train()
    exported = export_for_inference(model)
    assert model.training and isinstance(model.equivariant, GeometricWrapper)  # the original is untouched
    assert not any(isinstance(m, (enn.EquivariantModule, GeometricWrapper)) for m in exported.modules())
    assert not exported.training
    with torch.no_grad():
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-6)
    # Exact invariance carries over to the exported network.
    with torch.no_grad():
        torch.testing.assert_close(exported(torch.rot90(x, 1, dims=(-2, -1))), expected, rtol=1e-4, atol=1e-5)


def test_deepcopy_in_eval_mode(source):
    model, x, expected = source
    model.eval()  # escnn's cached filter is a non-leaf tensor, which copy.deepcopy refuses
    with pytest.raises(RuntimeError, match="deepcopy"):
        import copy

        copy.deepcopy(model)
    torch.testing.assert_close(logits(deepcopy_module(model), x), expected, rtol=0, atol=0)
