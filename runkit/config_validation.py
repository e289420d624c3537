"""One validation pass over a composed config, before any object is built or any data is touched.

- the run's own top-level options are checked against :class:`RunOptions` (a dataclass schema);
- every node with a ``_target_`` (model, network, optimiser, data module, trainer, callbacks, loggers...)
  is checked against the signature of the callable it names: each given value must match the parameter's
  annotation (int, float, str, bool, Optional, Union, Literal, Sequence, Mapping, ...) and name a
  parameter that exists. Nothing here knows a model's options: new models are checked by their signature.

A failure is one line per problem naming the full key, the value and what is expected
(``model.optimizer.lr='fast': expected float``).
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import inspect
import types
import typing
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """The composed config has a wrong type or an impossible value; the message names the key."""


@dataclasses.dataclass
class RunOptions:
    """The types of conf/train.yaml's top-level options (a schema only: their defaults live in the yaml)."""

    task_name: str
    tags: Optional[list]
    train: bool
    test: bool
    ckpt_path: Optional[str]
    auto_resume: bool
    seed: int
    optimized_metric: Optional[str]
    print_config: bool
    memory_check: Literal["error", "warn", "off"]


_UNKNOWN = object()


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is Union or isinstance(annotation, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, cabc.Sequence, cabc.Iterable, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin in (dict, cabc.Mapping):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def matches(value: Any, annotation: Any) -> Optional[bool]:
    """True/False when ``annotation`` decides about ``value``; None when it cannot (an unknown class)."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, (str, typing.TypeVar)):
        return None
    if isinstance(value, DictConfig) and "_target_" in value:
        return None  # built by Hydra; checked as a node of its own
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union or isinstance(annotation, types.UnionType):
        results = [matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        if any(r is None for r in results):
            return None
        return False
    if origin is Literal:
        return value in args
    if annotation is type(None) or annotation is None:
        return value is None
    if value is None:
        return False
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (
        list,
        tuple,
        cabc.Sequence,
        cabc.MutableSequence,
        set,
        frozenset,
        cabc.Iterable,
        cabc.Collection,
    ) or annotation in (list, tuple, cabc.Sequence, set):
        if not isinstance(value, (ListConfig, list, tuple)):
            return False if not (origin in (cabc.Iterable, cabc.Collection) and isinstance(value, str)) else None
        items = [a for a in args if a is not Ellipsis]
        if len(items) == 1:
            results = [matches(v, items[0]) for v in value]
            return False if any(r is False for r in results) else True
        return True
    if origin in (dict, cabc.Mapping, cabc.MutableMapping) or annotation in (dict, cabc.Mapping):
        return isinstance(value, (DictConfig, dict))
    try:
        import torch

        if annotation is torch.Tensor:  # numbers are accepted where tensors are (an lr as a tensor)
            return False if isinstance(value, (str, bool, DictConfig, ListConfig)) else None
    except ImportError:  # pragma: no cover
        pass
    if origin is not None and origin in (type, cabc.Callable) or annotation is cabc.Callable:
        return None
    if isinstance(annotation, type) and isinstance(value, annotation):
        return True
    return None  # another class (nn.Module, Accelerator, ...): Hydra builds it, or its own code checks


def _callable_parameters(target: Any) -> tuple[dict, bool]:
    """``({name: annotation}, accepts_any_keyword)``, following ``**kwargs`` up the class chain."""
    params: dict[str, Any] = {}
    open_kwargs = False
    chain = (
        [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    )
    for fn in chain:
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return params, True
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        has_var_kw = False
        for name, p in signature.parameters.items():
            if p.kind is p.VAR_KEYWORD:
                has_var_kw = True
                continue
            if p.kind is p.VAR_POSITIONAL or name == "self":
                continue
            params.setdefault(name, hints.get(name, p.annotation))
        if not has_var_kw:
            return params, open_kwargs
        if fn is object.__init__:
            break
    return params, True


def _resolve(target_path: str):
    from hydra.utils import get_object

    return get_object(target_path)


def _leaf(node: DictConfig, key: str) -> Any:
    value = node._get_node(key)
    if isinstance(value, (DictConfig, ListConfig)):
        return value
    return node[key]


def check_node(key: str, node: DictConfig, problems: list[str]) -> None:
    target_path = node.get("_target_")
    try:
        target = _resolve(str(target_path))
    except Exception as err:
        problems.append(f"{key}._target_={target_path!r}: cannot be imported ({type(err).__name__}: {err})")
        return
    params, open_kwargs = _callable_parameters(target)
    for name in node.keys():
        name = str(name)
        if name.startswith("_") and name.endswith("_"):
            continue
        full = f"{key}.{name}" if key else name
        if name not in params:
            if not open_kwargs:
                options = ", ".join(sorted(params)) or "none"
                problems.append(f"{full}: {target_path} has no option {name!r} (its options: {options})")
            continue
        try:
            value = _leaf(node, name)
        except Exception:
            continue  # an interpolation that resolves only later (e.g. hydra:runtime)
        verdict = matches(value, params[name])
        if verdict is False:
            shown = (
                OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
            )
            problems.append(f"{full}={shown!r}: expected {_type_name(params[name])}")
        elif verdict and name in OPTIMISER_RANGES and _is_optimiser(target):
            low, high, expected = OPTIMISER_RANGES[name]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not low <= value <= high:
                problems.append(f"{full}={value!r}: expected {expected}")


# Values an optimiser accepts but cannot train with: they overflow its state in the first steps.
OPTIMISER_RANGES = {
    "lr": (1e-12, 10.0, "a learning rate in [1e-12, 10]"),
    "weight_decay": (0.0, 10.0, "a weight decay in [0, 10]"),
}


def _is_optimiser(target: Any) -> bool:
    import torch

    return isinstance(target, type) and issubclass(target, torch.optim.Optimizer)


def _walk(node: Any, key: str, problems: list[str]) -> None:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            check_node(key, node, problems)
        for name in node.keys():
            child = node._get_node(name)
            if isinstance(child, (DictConfig, ListConfig)):
                _walk(
                    node[name] if not OmegaConf.is_missing(node, name) else None,
                    f"{key}.{name}" if key else str(name),
                    problems,
                )
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            if isinstance(child, (DictConfig, ListConfig)):
                _walk(child, f"{key}[{i}]", problems)


def check_run_options(cfg: DictConfig, problems: list[str]) -> None:
    hints = typing.get_type_hints(RunOptions)
    for field in dataclasses.fields(RunOptions):
        if field.name not in cfg:
            continue
        try:
            value = cfg[field.name]
        except Exception:
            continue
        if matches(value, hints[field.name]) is False:
            problems.append(f"{field.name}={value!r}: expected {_type_name(hints[field.name])}")


def validate_config(cfg: DictConfig, skip: tuple[str, ...] = ("hydra",)) -> None:
    """Raise :class:`ConfigError` listing every wrong value of ``cfg`` (one line each)."""
    problems: list[str] = []
    check_run_options(cfg, problems)
    for name in cfg.keys():
        if name in skip:
            continue
        child = cfg._get_node(name)
        if isinstance(child, (DictConfig, ListConfig)):
            _walk(cfg[name], str(name), problems)
    if problems:
        raise ConfigError(
            "invalid config:\n  " + "\n  ".join(problems) if len(problems) > 1 else f"invalid config: {problems[0]}"
        )


def check_schedule(cfg: DictConfig) -> None:
    """Refuse, before any work, a training schedule that can never validate (nothing could be selected)."""
    if not cfg.train:
        return
    trainer = cfg.trainer
    for key in ("max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}=0: this run would train nothing and test untrained weights; give it epochs, "
                "or evaluate a checkpoint with train=false ckpt_path=..."
            )
    if trainer.get("limit_val_batches") in (0, 0.0):
        raise ConfigError(
            "trainer.limit_val_batches=0: this run would never validate, so no checkpoint could be "
            "selected; give it validation batches, or evaluate with train=false"
        )
    every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
    if (
        isinstance(every, int)
        and isinstance(epochs, int)
        and epochs > 0
        and every > epochs
        and trainer.get("max_steps", -1) in (-1, None)
        and not trainer.get("val_check_interval")
    ):
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}: this run would "
            "never validate; lower check_val_every_n_epoch"
        )


def check_before_running(cfg: DictConfig) -> None:
    """Everything about the options that can be refused before the run directory is looked at: the whole
    config (:func:`validate_config`), what the run is asked to do, and its schedule."""
    validate_config(cfg)
    if not cfg.train and not cfg.test:
        raise ValueError("train=false and test=false: nothing to do")
    if not cfg.train and not cfg.get("ckpt_path"):
        raise ValueError("train=false needs ckpt_path=FILE (the checkpoint to evaluate)")
    check_schedule(cfg)
