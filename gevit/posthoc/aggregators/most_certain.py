"""The logits of the most confident view."""

from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator


class MostCertainAggregator(Aggregator):
    """With ``p_g = softmax(z(gx))``:

    - ``per_class=True`` (the original post-hoc code): for every class k separately,
      ``logits_k(x) = z_k(g*_k x)`` with ``g*_k = argmax_g p_{g,k}``;
    - ``per_class=False`` (the write-up's description): one view for all classes,
      ``logits(x) = z(g* x)`` with ``g* = argmax_g max_k p_{g,k}``.

    Ties go to the first view in group order. Gradients reach the selected views only.
    (B, |G|, K) logits -> (B, K).
    """

    level = "logits"
    summary = {
        "aggregated": "logits",
        "weights": "one-hot: argmax_g p_k(gx) per class",
        "normalisation": "–",
        "estimator": "gradient to the selected views",
        "difference": "same as the original code (`per_class: true`); `false` is the blog's single most confident view",
    }

    def __init__(self, per_class: bool = True):
        super().__init__()
        self.per_class = per_class

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        if self.per_class:
            return logits.gather(1, probs.argmax(dim=1, keepdim=True)).squeeze(1)
        best = probs.amax(dim=-1).argmax(dim=1)
        return logits[torch.arange(logits.shape[0], device=logits.device), best]

    def extra_repr(self) -> str:
        return f"level={self.level}, per_class={self.per_class}"
