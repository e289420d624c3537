import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules import ImageClassifier, NonFiniteLossError
from lightning_modules.schedulers import linear_warmup_cosine


class NaNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def tiny_loader(n=8):
    return DataLoader(TensorDataset(torch.rand(n, 1, 4, 4), torch.randint(3, (n,))), batch_size=4)


def classifier(net, **kwargs):
    defaults = dict(num_classes=3, in_channels=1, image_size=4, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    return ImageClassifier(net=net, **{**defaults, **kwargs})


def trainer(tmp_path, **kwargs):
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_nan_loss_stops_the_run_with_a_clear_error(tmp_path):
    with pytest.raises(NonFiniteLossError, match="training loss is nan.*resume from the last good checkpoint"):
        trainer(tmp_path, max_epochs=1).fit(classifier(NaNNet()), tiny_loader(), tiny_loader())


def test_wrong_image_shape_is_a_clear_error():
    module = classifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)))
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 4, 4\), got \(2, 1, 5, 5\)"):
        module(torch.rand(2, 1, 5, 5))


def test_normalisation_is_part_of_the_model():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Identity())
    module = ImageClassifier(net=net, num_classes=16, in_channels=1, image_size=4, input_mean=[0.5], input_std=[0.25])
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(module(x), ((x - 0.5) / 0.25).flatten(1))


def test_step_scheduler_gets_the_run_length(tmp_path):
    scheduler = functools.partial(linear_warmup_cosine, warmup_fraction=0.5)
    module = classifier(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), scheduler=scheduler, scheduler_interval="step"
    )
    t = trainer(tmp_path, max_epochs=2)
    t.fit(module, tiny_loader(), tiny_loader())
    lr_now = t.optimizers[0].param_groups[0]["lr"]
    assert t.global_step == 4
    assert lr_now == pytest.approx(0.0, abs=1e-12)  # cosine reached its end after exactly total_steps


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_cosine(opt, total_steps=10, warmup_fraction=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)
    with pytest.raises(ValueError):
        linear_warmup_cosine(opt, total_steps=None)


def test_parameter_counts_follow_freezing():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    module = classifier(net)
    assert module.parameter_counts()["model/params"] == 51
    net[1].bias.requires_grad_(False)
    counts = module.parameter_counts()
    assert counts["model/params_trainable"] == 48 and counts["model/params_frozen"] == 3
