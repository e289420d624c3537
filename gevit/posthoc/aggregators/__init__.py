"""Invariant aggregators of per-view outputs, one module each; importing this package registers them all.

Build one by name with :func:`build_aggregator` (``mean``, ``max``, ``sum``, ``lambda``, ``transformer``,
``equiattention``, ``mean_probs``, ``most_probable``, ``most_certain``, ``equizero``).
"""
from gevit.posthoc.aggregators.base import (LEVELS, Aggregator, build_aggregator, list_aggregators,
                                            register_aggregator)
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

__all__ = [
    "LEVELS", "Aggregator", "build_aggregator", "list_aggregators", "register_aggregator",
    "EquiAttentionAggregator", "EquizeroAggregator", "LambdaAggregator", "MaxAggregator", "MeanAggregator",
    "MeanProbsAggregator", "MostCertainAggregator", "MostProbableAggregator", "SumAggregator",
    "TransformerAggregator",
]
