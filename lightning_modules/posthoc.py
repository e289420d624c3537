"""A LightningModule around :class:`gevit.posthoc.PostHocInvariant`, trained (or not) under a regime (the
catalogue of methods that conf/model/aggregator/ offers is :mod:`runkit.posthoc_methods`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn
from torchmetrics import MeanMetric

from gevit.checkpoint_io import MissingCheckpointError
from gevit.groups import Group
from gevit.posthoc import PostHocInvariant, check_backbone
from gevit.posthoc.aggregators import Aggregator
from gevit.posthoc.backbones import RANDOM_INIT, Backbone, net_state_dict, read_framework_checkpoint
from lightning_modules.base import BaseClassifierModule

log = logging.getLogger(__name__)


def _count(modules: Iterable[nn.Module]) -> int:
    """Parameters of ``modules``, each counted once."""
    return sum({id(p): p.numel() for m in modules for p in m.parameters()}.values())


# ---- the LightningModule --------------------------------------------------------------------------------
def _aggregator_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding exactly one ``checkpoints/best-*.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted((path / "checkpoints").glob("best-*.ckpt"))
        if len(found) != 1:
            raise MissingCheckpointError(
                f"model.init_aggregator_from={path} is a folder, but it has "
                f"{len(found)} checkpoints/best-*.ckpt (expected exactly one); pass the file"
            )
        return found[0]
    if not path.is_file():
        raise MissingCheckpointError(
            f"model.init_aggregator_from={path} does not exist (a run directory or its checkpoints/best-....ckpt)"
        )
    return path


class PostHocClassifier(BaseClassifierModule):
    """A backbone classifier made invariant to ``group`` by aggregating its outputs over the |G| views of
    each image (one backbone call on B·|G| images), or by canonicalizing each image once, trained under
    ``regime``.

    ``forward(images (B, C, H, W) in [0, 1]) -> logits (B, num_classes)``. The group acts on the images as
    they come from the data module (background 0): the views are made after normalisation with the
    background set to the normalised value of 0, which is the same as transforming the raw images.

    Args:
        backbone: a :class:`gevit.posthoc.Backbone`, or a partial (a ``conf/model/backbone/`` yaml with
            ``_partial_: true``) called with ``num_classes``, ``in_channels``, ``image_size``.
        aggregator: an :class:`gevit.posthoc.Aggregator` or a partial (a ``conf/model/aggregator/`` yaml),
            completed with the backbone's and the group's facts.
        group: ``p4``, ``mz2``, ``p4m``, ``p8``, ``p16`` (any name of :mod:`gevit.groups`).
        regime: ``zero_shot`` (nothing trained), ``aggregator_only``, ``mlp`` (classification head +
            aggregator), ``backbone_only`` (backbone, aggregator frozen) or ``full``. Frozen parameters have
            ``requires_grad=False`` and frozen submodules stay in eval mode (dropout off, BatchNorm running
            statistics) whenever the module is put in training mode.
        interpolation, padding: how non-multiples of 90 degrees are resampled; ``zeros`` or ``circular_mask``.
        spatial_pooling: the read-out after spatial aggregators (:class:`gevit.posthoc.PostHocInvariant`).
        init_aggregator_from: a checkpoint (or run directory) of an earlier post-hoc run whose aggregator
            weights this one starts from (write-up 003's two phases: ``aggregator_only``, then ``full`` or
            ``backbone_only``).
        **kwargs: :class:`BaseClassifierModule`'s arguments (classes, image shape, normalisation, optimiser).
    """

    def __init__(
        self,
        backbone: Union[Backbone, Callable[..., Backbone]],
        aggregator: Union[Aggregator, Callable[..., Aggregator]],
        group: str = "p4",
        regime: str = "zero_shot",
        interpolation: str = "bilinear",
        padding: str = "zeros",
        spatial_pooling: str = "auto",
        init_aggregator_from: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(backbone, nn.Module):
            backbone = backbone(num_classes=self.num_classes, in_channels=self.in_channels, image_size=self.image_size)
        net_backbone = check_backbone(backbone, self.num_classes, self.in_channels, self.image_size)
        background = (-self.input_mean / self.input_std).flatten()
        self.net = PostHocInvariant(
            net_backbone,
            group,
            aggregator,
            interpolation=interpolation,
            padding=padding,
            background=background,
            spatial_pooling=spatial_pooling,
        )
        if init_aggregator_from:
            self.load_aggregator(init_aggregator_from)
        self.regime = regime
        trainable = self.net.trainable_modules(regime)
        self.net.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)
        self.train(self.training)
        self.canonicalizes = self.net.aggregator.level == "input"
        if self.canonicalizes:  # the canonicalizer's accuracy on known rotations
            self.val_canon_acc, self.test_canon_acc = MeanMetric(), MeanMetric()
        if net_backbone.weights_source == RANDOM_INIT and regime not in ("full", "backbone_only"):
            log.warning(
                "the backbone has RANDOM weights (model.backbone.ckpt_path is not set): regime=%s does "
                "not train it, so results mean nothing beyond a smoke test",
                regime,
            )
        log.info(
            "post-hoc %s over %s (|G|=%d), regime %s, backbone weights: %s; parameters %s",
            self.net.aggregator.name,
            self.net.group.name,
            self.net.group.order,
            regime,
            net_backbone.weights_source,
            self.parameter_counts(),
        )

    def load_aggregator(self, path: str | Path) -> None:
        """Load the aggregator weights (``net.aggregator.*``) of an earlier post-hoc checkpoint, strictly."""
        ckpt = _aggregator_checkpoint(path)
        prefix = "aggregator."
        state = {
            k[len(prefix) :]: v
            for k, v in net_state_dict(read_framework_checkpoint(ckpt, option="model.init_aggregator_from")).items()
            if k.startswith(prefix)
        }
        if not state:
            raise ValueError(
                f"{ckpt} holds no aggregator weights (net.aggregator.*): is it a post-hoc run with a "
                "learned aggregator?"
            )
        try:
            self.net.aggregator.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"the aggregator in {ckpt} does not match model/aggregator={self.net.aggregator.name} "
                f"with these options:\n{err}"
            ) from err
        log.info("aggregator initialised from %s", ckpt)

    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def trainable_modules(self) -> list[nn.Module]:
        return self.net.trainable_modules(self.regime)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        seen = set()
        for module in self.trainable_modules():
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def train(self, mode: bool = True) -> "PostHocClassifier":
        """Training mode for the trained parts only; frozen parts always run in eval mode."""
        super().train(mode)
        if mode:
            self.net.eval()
            for module in self.trainable_modules():
                module.train()
        return self

    # ---- canonicalization: prior / contrastive losses and accuracy on known rotations -----------------------
    @property
    def invariance_group(self) -> Group:
        """The group the model is made invariant to: the rotation-robustness callback reports the accuracy
        on the test images transformed by each of its elements (``test/acc_group_element_i``, ``test/group_acc``)."""
        return self.net.group

    def training_step(self, batch, batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        aggregator = self.net.aggregator
        if self.canonicalizes and aggregator.training:
            # the canonicalizer's own objective on the training images: the prior, a contrastive term
            for name, term in aggregator.auxiliary_losses(self.normalize(batch[0]), self.net.views).items():
                self.log(f"train/canon_{name}", term.detach(), on_step=False, on_epoch=True)
                loss = loss + term
        return loss

    @torch.no_grad()
    def canonicalizer_accuracy(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Fraction of images whose copy transformed by a random known element g is assigned orientation g
        (for upright images: the canonicalizer's accuracy)."""
        normalized = self.normalize(images)
        generator = torch.Generator().manual_seed(seed)
        known = torch.randint(0, self.net.group.order, (len(images),), generator=generator).to(images.device)
        transformed = self.net.views.transform(normalized, known)
        return (self.net.aggregator.predicted_elements(transformed, self.net.views) == known).float().mean()

    def validation_step(self, batch, batch_idx: int):
        super().validation_step(batch, batch_idx)
        if self.canonicalizes:
            self.val_canon_acc(self.canonicalizer_accuracy(batch[0], seed=batch_idx), weight=len(batch[0]))
            self.log("val/canon_acc", self.val_canon_acc, on_step=False, on_epoch=True)

    def test_step(self, batch, batch_idx: int):
        out = super().test_step(batch, batch_idx)
        if self.canonicalizes:
            self.test_canon_acc(self.canonicalizer_accuracy(batch[0], seed=batch_idx), weight=len(batch[0]))
            self.log("test/canon_acc", self.test_canon_acc, on_step=False, on_epoch=True)
        return out

    def parameter_counts(self) -> dict:
        """The base counts (total / trainable / frozen) and the size of each part."""
        head = _count(self.net.backbone.head_modules)
        return {
            **super().parameter_counts(),
            "model/params_backbone": _count([self.net.backbone]) - head,
            "model/params_head": head,
            "model/params_aggregator": _count([self.net.aggregator]),
        }
