"""Which ``_target_``s a model config stored in a checkpoint may name: a stored config is data, not code.

A checkpoint is a file anyone can craft: one made only of plain dicts passes ``torch.load(weights_only=True)``,
and its stored model config is then built by ``hydra.utils.instantiate``. A ``_target_`` such as
``builtins.open`` or ``shutil.copyfile`` would write files. So before anything stored is built,
:func:`check_stored_config` walks the whole config and accepts only

- the ``_target_``s the project's model configs can produce: every ``_target_`` in ``conf/model/**`` and under
  the ``model:`` key of ``conf/experiment/`` and ``conf/recipe/`` (a new model is one module plus one yaml,
  so it is trusted as soon as its yaml exists);
- torch's optimisers and learning-rate schedulers (``torch.optim.<Optimizer>``,
  ``torch.optim.lr_scheduler.<LRScheduler>``), which a user may choose on the command line;
- names given explicitly by the caller (``trusted=``), for a user's own classes;

and refuses interpolations (``${...}``: a stored config is resolved; a resolver could import modules).
Anything else is refused with one line naming the key, before any import or call.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable, Iterator

from gevit.checkpoint_io import CheckpointError
from runkit.resolvers import CONF_DIR

PROJECT_PACKAGES = ("gevit", "datamodules", "lightning_modules", "runkit")


class UntrustedConfigError(CheckpointError):
    """A stored config names something this project would not build; nothing was imported or called."""


def _targets(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


@functools.lru_cache(maxsize=None)
def conf_model_targets(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every ``_target_`` a model config composed from ``conf_dir`` can hold (read as yaml, nothing imported)."""
    import yaml

    found: set[str] = set()
    for path in sorted((conf_dir / "model").rglob("*.yaml")):
        found.update(_targets(yaml.safe_load(path.read_text()) or {}))
    for folder in ("experiment", "recipe"):
        for path in sorted((conf_dir / folder).rglob("*.yaml")):
            node = yaml.safe_load(path.read_text()) or {}
            found.update(_targets(node.get("model", {}) if isinstance(node, dict) else {}))
    return frozenset(found)


def _is_torch_optimisation_class(target: str) -> bool:
    """``torch.optim.X`` (an Optimizer) or ``torch.optim.lr_scheduler.X`` (a scheduler): looked up as attributes
    of modules torch has already imported, so nothing new is imported."""
    import torch

    module, _, name = target.rpartition(".")
    if module == "torch.optim":
        cls, base = getattr(torch.optim, name, None), torch.optim.Optimizer
    elif module == "torch.optim.lr_scheduler":
        cls = getattr(torch.optim.lr_scheduler, name, None)
        base = getattr(torch.optim.lr_scheduler, "LRScheduler", torch.optim.lr_scheduler._LRScheduler)
    else:
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def _walk(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    yield key, node
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _walk(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{key}[{index}]")


def check_stored_config(config: Any, source: str, trusted: Iterable[str] = (), root: str = "model") -> None:
    """Raise :class:`UntrustedConfigError` naming the first key of ``config`` (read from ``source``) that this
    project would not build; see the module docstring for what is accepted."""
    allowed = conf_model_targets() | set(trusted)
    for key, value in _walk(config, root):
        if isinstance(value, str) and "${" in value:
            raise UntrustedConfigError(
                f"refusing to rebuild the model stored in {source}: {key}={value!r} is an interpolation, and a "
                "stored config is resolved data; nothing was built"
            )
        if isinstance(value, dict) and "_target_" in value:
            target = value["_target_"]
            if not isinstance(target, str) or not (target in allowed or _is_torch_optimisation_class(target)):
                if isinstance(target, str) and target.split(".")[0] in PROJECT_PACKAGES:
                    raise UntrustedConfigError(
                        f"the model stored in {source} cannot be built by this version of the code: "
                        f"{key}._target_={target!r} is not among the targets of its conf/model configs (renamed or "
                        "removed since the checkpoint was written?); nothing was built"
                    )
                raise UntrustedConfigError(
                    f"refusing to rebuild the model stored in {source}: {key}._target_={target!r} is not a class "
                    f"or function this project's conf/model configs build (nor a torch optimiser or scheduler); "
                    "nothing was imported or called. For your own class, add its yaml under conf/model/"
                )
