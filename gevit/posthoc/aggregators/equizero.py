"""equizero: the logits of the view that minimises a proxy loss, with a straight-through gradient."""

from __future__ import annotations

import torch

from gevit.posthoc.aggregators.base import Aggregator

PROXIES = ("entropy", "max_prob")


class EquizeroAggregator(Aggregator):
    """equizero (Basu et al., 2023)::

        g* = argmin_g L(z(gx)),      logits(x) = z(g* x)

    with the proxy loss ``L`` = ``entropy`` (``-sum_k p_k log p_k`` of ``p = softmax(z)``) or ``max_prob``
    (``-max_k p_k``); both select the most confident view (the original's ``argmin`` of the maximum
    probability selected the least confident one). Ties go to the first view in group order; the set
    of views, hence the selected logits, does not depend on their order.

    For training, the gradient is straight-through the mean of the views:
    ``logits = zbar + (z(g* x) - zbar).detach()`` with ``zbar = (1/|G|) sum_g z(gx)``, whose value is
    ``z(g* x)``. (B, |G|, K) logits -> (B, K).
    """

    level = "logits"
    summary = {
        "aggregated": "logits",
        "weights": "one-hot: argmin_g of a proxy loss",
        "normalisation": "–",
        "estimator": "straight-through the mean of the views",
        "difference": "proxy `entropy` by default (EquiClassification's `--use_entropy`); its other "
        "path took argmin of the max probability, the *least* confident view; EquiCLIP's "
        "code took the class-wise max over the group (= `most_certain`)",
    }

    def __init__(self, proxy: str = "entropy"):
        super().__init__()
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {PROXIES}, got {proxy!r}")
        self.proxy = proxy

    def proxy_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, |G|, K) -> (B, |G|)."""
        log_probs = logits.log_softmax(dim=-1)
        if self.proxy == "entropy":
            return -(log_probs.exp() * log_probs).sum(dim=-1)
        return -log_probs.amax(dim=-1).exp()

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        best = self.proxy_loss(logits.detach()).argmin(dim=1)
        chosen = logits[torch.arange(logits.shape[0], device=logits.device), best]
        if not (torch.is_grad_enabled() and logits.requires_grad):
            return chosen
        mean = logits.mean(dim=1)
        return mean + (chosen - mean).detach()

    def extra_repr(self) -> str:
        return f"level={self.level}, proxy={self.proxy}"
