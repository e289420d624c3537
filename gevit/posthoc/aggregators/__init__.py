"""Invariant aggregators of per-view outputs, one module each.

Each is built from its yaml in ``conf/model/aggregator/`` (``_target_`` + ``_partial_: true``) and completed
with the backbone's facts by :func:`complete_aggregator`; in Python, pass a class, a
``functools.partial`` or an instance to :class:`gevit.posthoc.PostHocInvariant`. The class attributes
``level``, ``learned``, ``weighted_views`` and ``summary`` describe each method (see :mod:`.base`).
"""

from gevit.posthoc.aggregators.base import FACTS, LEVELS, Aggregator, complete_aggregator
from gevit.posthoc.aggregators.equiattention import EquiAttentionAggregator
from gevit.posthoc.aggregators.equizero import EquizeroAggregator
from gevit.posthoc.aggregators.lambda_equitune import LambdaAggregator
from gevit.posthoc.aggregators.max import MaxAggregator
from gevit.posthoc.aggregators.mean import MeanAggregator
from gevit.posthoc.aggregators.mean_probs import MeanProbsAggregator
from gevit.posthoc.aggregators.most_certain import MostCertainAggregator
from gevit.posthoc.aggregators.most_probable import MostProbableAggregator
from gevit.posthoc.aggregators.sum import SumAggregator
from gevit.posthoc.aggregators.transformer import TransformerAggregator
from gevit.posthoc.aggregators.transformer_faithful import FaithfulTransformerAggregator
from gevit.posthoc.aggregators.tta import TTAAggregator

__all__ = [
    "FACTS",
    "LEVELS",
    "Aggregator",
    "complete_aggregator",
    "EquiAttentionAggregator",
    "EquizeroAggregator",
    "FaithfulTransformerAggregator",
    "LambdaAggregator",
    "MaxAggregator",
    "MeanAggregator",
    "MeanProbsAggregator",
    "MostCertainAggregator",
    "MostProbableAggregator",
    "SumAggregator",
    "TTAAggregator",
    "TransformerAggregator",
]
