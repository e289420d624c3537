"""Wrong types and impossible values fail before any data is touched, in one line naming the key, the value
and what is expected; every shipped experiment passes the same check (no false alarms). The command-line
form is tested with the other real processes in tests/runkit/test_lifecycle.py."""

from __future__ import annotations

import pytest

import train as train_script
from runkit.config_validation import ConfigError, validate_config
from tests.support.compose import CONF_DIR, FAST, compose_config


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc': expected int or null"),
        ("seed=abc", "seed='abc': expected int"),
        ("model.optimizer.lr=fast", "model.optimizer.lr='fast': expected float"),
        ("model.net.patch_size=huge", "model.net.patch_size='huge': expected int"),
        ("+model.net.no_such_option=1", "model.net.no_such_option: gevit.models.VisionTransformer has no option"),
        ("memory_check=maybe", "memory_check='maybe': expected one of 'error', 'warn', 'off'"),
        ("data.batch_size=[64]", "data.batch_size=[64]: expected int"),
        ("model.optimizer.lr=1e38", "model.optimizer.lr=1e+38: expected a learning rate in [1e-12, 10]"),
        ("model.optimizer.lr=0", "model.optimizer.lr=0: expected a learning rate in [1e-12, 10]"),
        ("model.optimizer.weight_decay=-1", "model.optimizer.weight_decay=-1: expected a weight decay in [0, 10]"),
    ],
)
def test_a_wrong_value_names_its_key(override, message, tmp_path, monkeypatch):
    cfg = compose_config(FAST + [override], tmp_path)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert message in str(info.value)
    # train.run refuses it before building the data module (nothing is read)
    monkeypatch.setattr(train_script, "instantiate_named", lambda *a, **k: pytest.fail("data was touched"))
    with pytest.raises(ConfigError):
        train_script.run(cfg)


def test_an_impossible_value_is_refused_by_its_callable_naming_the_key(tmp_path):
    cfg = compose_config(FAST + ["callbacks.rotation_robustness.step_deg=0"], tmp_path)
    with pytest.raises(ConfigError, match=r"callbacks.rotation_robustness: step_deg=0: expected a number of degrees"):
        train_script.run(cfg)


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize(
    "overrides",
    [[f"experiment={name}"] for name in _choices("experiment")]
    + [["trainer=ddp", "callbacks=with_early_stopping", "logger=wandb"]],
)
def test_every_shipped_config_validates(overrides, tmp_path):
    validate_config(compose_config(overrides, tmp_path))
