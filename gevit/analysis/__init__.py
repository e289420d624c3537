"""Analysis maths behind the figures, as plain torch on bare networks (no Lightning, Hydra or plotting).

- :mod:`~gevit.analysis.facts`: what a network is (:func:`model_facts`), as its class states it;
- :mod:`~gevit.analysis.latents`: GE-ViT feature maps per layer and their equivariance errors;
- :mod:`~gevit.analysis.attention`: group attention maps (received attention, centre neighbourhood) and
  ViT CLS attention with rollout;
- :mod:`~gevit.analysis.views`: per-view weights of post-hoc aggregators and their statistics;
- :mod:`~gevit.analysis.rotation`: class probabilities under a sweep of rotation angles.

Inputs are what the network expects (normalised images); a LightningModule's ``normalize`` does that.
"""

from gevit.analysis.attention import (
    attention_received,
    attention_rollout,
    group_attention_maps,
    neighbourhood_attention,
    vit_cls_attention,
)
from gevit.analysis.facts import ModelFacts, aggregator_weighs_views, attention_window, model_facts
from gevit.analysis.latents import (
    element_name,
    latent_equivariance_errors,
    layer_latents,
    most_group_varying_channel,
    quarter_turn_element,
    quarter_turns,
)
from gevit.analysis.rotation import angles_every, predict_probabilities, rotated_copies, rotation_sweep
from gevit.analysis.views import has_view_weights, view_weight_statistics, view_weights

__all__ = [
    "ModelFacts",
    "aggregator_weighs_views",
    "angles_every",
    "attention_received",
    "attention_rollout",
    "attention_window",
    "element_name",
    "group_attention_maps",
    "has_view_weights",
    "latent_equivariance_errors",
    "layer_latents",
    "model_facts",
    "most_group_varying_channel",
    "neighbourhood_attention",
    "predict_probabilities",
    "quarter_turn_element",
    "quarter_turns",
    "rotated_copies",
    "rotation_sweep",
    "view_weight_statistics",
    "view_weights",
    "vit_cls_attention",
]
