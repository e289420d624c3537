"""Figures from ``train.py`` checkpoints and run directories, one module per figure (docs/visualizations.md).

- :mod:`~scripts.figures.rotation_gif`: a digit rotated through 360° with each model's probabilities;
- :mod:`~scripts.figures.latents`: GE-ViT feature maps per layer under quarter turns;
- :mod:`~scripts.figures.attention`: GE-ViT group attention and ViT CLS attention / rollout;
- :mod:`~scripts.figures.view_weights`: post-hoc view weights;
- :mod:`~scripts.figures.robustness`: accuracy vs angle of several runs.

Shared: :mod:`~scripts.figures.common` (checkpoints loaded for drawing, refusals, drawing helpers) and
:mod:`~scripts.figures.digits` (the validation digits drawn). The maths is in :mod:`gevit.analysis`,
rebuilding checkpoints in :func:`runkit.checkpoint_loading.load_run`, W&B in :mod:`runkit.wandb_logging`.
"""

from scripts.figures.attention import gevit_attention, plot_gevit_attention, plot_vit_attention, vit_attention
from scripts.figures.common import CheckpointKindError, LoadedModel, check_digit_shape, load_model
from scripts.figures.digits import validation_digits
from scripts.figures.latents import gevit_latents, plot_gevit_latents
from scripts.figures.robustness import plot_robustness_comparison, read_robustness_curve, run_label
from scripts.figures.rotation_gif import plot_rotation_confidence, rotation_predictions, write_rotation_gif
from scripts.figures.view_weights import plot_view_weights, view_weight_statistics

__all__ = [
    "CheckpointKindError",
    "LoadedModel",
    "check_digit_shape",
    "gevit_attention",
    "gevit_latents",
    "load_model",
    "plot_gevit_attention",
    "plot_gevit_latents",
    "plot_robustness_comparison",
    "plot_rotation_confidence",
    "plot_view_weights",
    "plot_vit_attention",
    "read_robustness_curve",
    "rotation_predictions",
    "run_label",
    "validation_digits",
    "view_weight_statistics",
    "vit_attention",
    "write_rotation_gif",
]
