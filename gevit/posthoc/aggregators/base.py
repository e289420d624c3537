"""The aggregator interface: what every post-hoc method declares about itself, and how it is completed.

An aggregator combines the |G| per-view outputs of each image into one, in a way that does not depend on
the order of the views: transforming the input by a group element only permutes the views, so a
permutation-invariant aggregator makes the wrapped classifier invariant. Its ``level`` says what it
combines:

- ``embedding``: pre-logits embeddings (B, |G|, D) -> (B, D), followed by the backbone's head;
- ``logits``: per-view logits (B, |G|, K) -> logits (B, K);
- ``spatial``: view weights from the embeddings (B, |G|, D), applied to the spatial feature maps
  (B, |G|, C, h, w) after ``g_i^-1`` has been applied to view ``i``; the combined map (B, C, h, w) goes
  through an invariant pooling (see :class:`~gevit.posthoc.PostHocInvariant`) and the head;
- ``input``: the method chooses one transformed copy of the input itself (learned canonicalization), and
  the backbone runs once on it.

Everything the framework needs to know about a method is a class attribute (``level``, ``learned``,
``weighted_views``, ``summary``), so the config folder ``conf/model/aggregator/`` (one yaml with a
``_target_`` per method) is the only list of methods: tests, sweeps and the docs table read it.

Facts about the wrapped backbone and the group are known only when the wrapper is built. An aggregator
config is therefore a partial (``_partial_: true``) that :func:`complete_aggregator` calls with the
facts its constructor names: ``embed_dim`` (D), ``spatial_features`` (whether the backbone has NCHW
feature maps), ``group`` (the :class:`~gevit.groups.Group`) and ``in_channels`` (of the images).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, ClassVar, Dict, Union

import torch.nn as nn

LEVELS = ("embedding", "logits", "spatial", "input")
FACTS = ("embed_dim", "spatial_features", "group", "in_channels")


class Aggregator(nn.Module):
    """Base class: ``forward`` maps (B, |G|, ...) to (B, ...), invariantly under permutations of the views.

    Class attributes (the facts the framework reads; subclasses override them):

    - ``level``: see the module docstring (an instance may switch between ``embedding`` and ``spatial``);
    - ``learned``: True when the method has parameters that must be trained before it means anything
      (such a method cannot run ``zero_shot``);
    - ``weighted_views``: True when :meth:`weights` gives per-view weights (B, |G|) from the embeddings;
    - ``summary``: the row of the methods table in docs/posthoc.md (what is aggregated, weights,
      normalisation, estimator, difference from the original and why).

    ``name`` is the module's name (``mean``, ``max`` ...) unless a class sets ``display_name``.
    """

    level: ClassVar[str] = "embedding"
    learned: ClassVar[bool] = False
    weighted_views: ClassVar[bool] = False
    display_name: ClassVar[str] = ""
    summary: ClassVar[Dict[str, str]] = {}

    @property
    def name(self) -> str:
        return type(self).display_name or type(self).__module__.rsplit(".", 1)[-1]

    def extra_repr(self) -> str:
        return f"level={self.level}"


AggregatorFactory = Union[Aggregator, Callable[..., Aggregator]]


def aggregator_weighs_views(aggregator: nn.Module) -> bool:
    """Whether a post-hoc aggregator gives per-view weights ``weights(embeddings (B, |G|, D)) -> (B, |G|)``:
    its class says so (``weighted_views``); classes that do not say, by having the method."""
    return bool(getattr(type(aggregator), "weighted_views", callable(getattr(aggregator, "weights", None))))


def complete_aggregator(factory: AggregatorFactory, **facts: Any) -> Aggregator:
    """Build an aggregator from ``factory`` — an :class:`Aggregator` (returned as is), a class or a
    partial (``hydra.utils.instantiate`` of a ``_partial_: true`` config) — passing it those of the
    ``facts`` (:data:`FACTS`) that its signature names."""
    if isinstance(factory, Aggregator):
        return factory
    unknown = set(facts) - set(FACTS)
    if unknown:
        raise TypeError(f"unknown aggregator facts {sorted(unknown)}; the facts are {FACTS}")
    target = factory.func if isinstance(factory, functools.partial) else factory
    if isinstance(target, type) and target.__init__ is nn.Module.__init__:
        parameters = {}  # no constructor of its own: nn.Module's (*args, **kwargs) takes no facts
    else:
        parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    aggregator = factory(**{k: v for k, v in facts.items() if takes_any or k in parameters})
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"{factory} built a {type(aggregator).__name__}, not a gevit.posthoc Aggregator")
    if aggregator.level not in LEVELS:
        raise ValueError(f"aggregator {aggregator.name!r} has level {aggregator.level!r}, not one of {LEVELS}")
    return aggregator
