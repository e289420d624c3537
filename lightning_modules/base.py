"""The train/val/test logic every method family shares.

A subclass implements :meth:`compute_logits` (normalised images -> logits) and, if it freezes parts of
its network, :meth:`trainable_parameters`. Everything else — input checks and normalisation, loss,
metrics with the project's names, the NaN guard, optimiser/scheduler construction from Hydra
``_partial_`` nodes, parameter counts — lives here, once.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, Sequence

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

log = logging.getLogger(__name__)


def plain_options(options: dict) -> dict:
    """Hydra/OmegaConf containers in ``options`` turned into plain lists/dicts for the network constructors."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return {
        key: OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value
        for key, value in options.items()
    }


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf. The run stops instead of silently skipping batches."""


class BaseClassifierModule(L.LightningModule):
    """Shared classification logic.

    ``forward(images)``: images (B, C, H, W) in the data module's raw range ([0, 1]) -> logits
    (B, num_classes). Images are normalised here with ``input_mean``/``input_std`` (so rotations and
    zero padding act on raw images whose background is 0, and checkpoints carry their normalisation).

    Args:
        num_classes, in_channels, image_size: the data module's facts; inputs are checked against them.
        input_mean, input_std: per-channel normalisation.
        optimizer: a partial (``_partial_: true``) taking ``params``.
        scheduler: optional partial taking ``optimizer``; arguments named ``total_steps`` or
            ``steps_per_epoch`` are filled in from the trainer when left unset.
        scheduler_interval: ``epoch`` or ``step``.
        label_smoothing: passed to the cross-entropy.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        input_mean: Sequence[float] = (0.0,),
        input_std: Sequence[float] = (1.0,),
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., object]] = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if len(input_mean) != in_channels or len(input_std) != in_channels:
            raise ValueError(
                f"input_mean/input_std need {in_channels} values, got {list(input_mean)} / {list(input_std)}"
            )
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        self.register_buffer("input_mean", torch.tensor(list(input_mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(list(input_std), dtype=torch.float32).view(1, -1, 1, 1))

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        # Best validation accuracy survives a resume from last.ckpt.
        self.val_acc_best.persistent(True)
        # The resolved model config, stored in checkpoints so a run's checkpoint is self-describing.
        self.build_config: Optional[dict] = None

    # ---- the part a subclass provides ---------------------------------------------------------
    def compute_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) -> logits (B, num_classes)."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    # ---- forward --------------------------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(images.shape)}; check data.image_size / data.in_channels against the model"
            )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.input_mean) / self.input_std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        return self.compute_logits(self.normalize(images))

    # ---- steps ----------------------------------------------------------------------------------
    def model_step(self, batch):
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return loss, logits, targets

    def training_step(self, batch, batch_idx: int):
        loss, logits, targets = self.model_step(batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}, "
                f"batch {batch_idx}. Stopping instead of skipping the batch; resume from the last good "
                "checkpoint (ckpt_path=.../checkpoints/last.ckpt) with a lower learning rate, or check the data."
            )
        self.train_loss(loss.detach(), weight=len(targets))  # a mean over images, not over batches
        self.train_acc(logits.detach(), targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int):
        loss, logits, targets = self.model_step(batch)
        self.val_loss(loss, weight=len(targets))
        self.val_acc(logits, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int):
        loss, logits, targets = self.model_step(batch)
        self.test_loss(loss, weight=len(targets))
        self.test_acc(logits, targets)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        return {"logits": logits}

    def predict_step(self, batch, batch_idx: int):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(-1)

    # ---- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} has no optimizer; set model.optimizer in the config")
        params = [p for p in self.trainable_parameters()]
        if not params:
            raise ValueError("no trainable parameters: this regime trains nothing; run with train=false instead")
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer, **self._scheduler_extras())
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1},
        }

    def _scheduler_extras(self) -> dict:
        """Fill ``total_steps``/``steps_per_epoch`` of a partial scheduler from the trainer."""
        import inspect

        factory = self.scheduler_factory
        target = getattr(factory, "func", factory)
        bound = getattr(factory, "keywords", {}) or {}
        try:
            names = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return {}
        extras = {}
        total = int(self.trainer.estimated_stepping_batches)
        if "total_steps" in names and bound.get("total_steps") is None:
            extras["total_steps"] = total
        if "steps_per_epoch" in names and bound.get("steps_per_epoch") is None:
            extras["steps_per_epoch"] = max(1, total // max(1, self.trainer.max_epochs or 1))
        return extras

    # ---- bookkeeping ----------------------------------------------------------------------------
    def parameter_counts(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"model/params": total, "model/params_trainable": trainable, "model/params_frozen": total - trainable}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.build_config is not None:
            checkpoint["gevit_model_config"] = self.build_config
