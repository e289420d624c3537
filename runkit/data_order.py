"""The training order of a run: a function of (seed, epoch) only, so a resumed run replays exactly the batches
the uninterrupted run saw (README "Guarantees")."""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch.utils.data import DataLoader, RandomSampler

log = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``epoch`` of a run seeded with ``seed`` (distinct for every pair)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 12_345) % (2**63)


class EpochSeededSampler(RandomSampler):
    """A random permutation of the data set that is a function of ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` before every training epoch, so a resumed run replays exactly the
    order the uninterrupted run used for the same epoch. ``self.generator`` (reseeded by ``set_epoch``) is
    also the DataLoader's, from which it draws the workers' base seed. Under DDP Lightning replaces it (it is a
    ``RandomSampler``) by a ``DistributedSampler`` seeded with the run seed, which is epoch-seeded as well.
    """

    def __init__(self, data_source, seed: int, epoch: int = 0):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = int(seed)
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))

    def __iter__(self) -> Iterator[int]:
        # A generator of its own: Lightning may create the loader's iterator (which draws the workers' base
        # seed from self.generator) before or after set_epoch, depending on whether the run was resumed.
        order = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=order).tolist()


def with_epoch_seeded_order(loader: DataLoader, seed: int, epoch: int = 0) -> DataLoader:
    """The same DataLoader, shuffled by an :class:`EpochSeededSampler` instead of a free-running one.

    With workers, the loader starts them anew every epoch (``persistent_workers`` off), after Lightning set the
    epoch: a worker process prefetches from the sampler as soon as it starts, and a resumed run may start the
    iterator before the epoch is set; and every worker's random stream (per-image augmentation) is then seeded
    from the epoch's base seed, so it is a function of (seed, epoch, worker, rank), as Lightning's worker init
    makes it from that base seed. Loaders that do not shuffle with a plain ``RandomSampler`` are returned
    unchanged (with a warning)."""
    if type(loader) is not DataLoader or type(loader.sampler) is not RandomSampler or loader.batch_sampler is None:
        if isinstance(loader, DataLoader) and isinstance(loader.sampler, EpochSeededSampler):
            return loader
        log.warning(
            "the training loader (%s, sampler %s) is not a plain shuffled DataLoader: its order is not "
            "seeded per epoch, so a resumed run may not replay it exactly",
            type(loader).__name__,
            type(getattr(loader, "sampler", None)).__name__,
        )
        return loader
    sampler = EpochSeededSampler(loader.dataset, seed, epoch)
    extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers > 0 else {}
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=False,
        generator=sampler.generator,
        **extra,
    )


def seed_training_order(datamodule, seed: int) -> None:
    """Make ``datamodule.train_dataloader()`` return loaders whose order is a function of (seed, epoch).

    The loader starts at the epoch the trainer is about to run: Lightning starts a resumed run's first iterator
    (and its workers, which prefetch at once) before it tells the sampler the epoch."""
    build = datamodule.train_dataloader

    def train_dataloader():
        trainer = getattr(datamodule, "trainer", None)
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        return with_epoch_seeded_order(build(), seed, epoch)

    train_dataloader.__doc__ = build.__doc__
    datamodule.train_dataloader = train_dataloader
