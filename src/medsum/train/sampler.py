"""Which examples each process trains on at each optimizer step: the data position is just the step number."""

from __future__ import annotations

import math

from medsum.config import RunConfig
from medsum.data import length_grouped_batches
from medsum.errors import MedsumError


class MicroBatchSampler:
    """This rank's example indices for each micro-batch of an optimizer step.

    Global micro-batches of ``batch_size * world_size`` examples are drawn epoch by epoch in a seeded, length-grouped
    order (batches smaller than ``world_size`` are dropped); rank r takes its slice, so every process sees a disjoint
    shard, and the micro-batches of step s are the global ones numbered s * grad_accum ... s * grad_accum +
    grad_accum - 1, counted across epochs.
    """

    def __init__(self, lengths: list[int], batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        self.lengths, self.seed, self.grad_accum = lengths, seed, grad_accum
        self.rank, self.world_size = rank, world_size
        self.global_size = batch_size * world_size
        self._rewind()

    def for_step(self, step: int) -> list[list[int]]:
        """This rank's indices for each of the ``grad_accum`` micro-batches of optimizer step ``step`` (0-based)."""
        return [self._global_batch(step * self.grad_accum + k)[self.rank::self.world_size]
                for k in range(self.grad_accum)]

    @property
    def micro_batches_per_epoch(self) -> int:
        """Global micro-batches in one pass over the data (the first epoch's)."""
        return len(self.epoch_batches(0))

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        batches = length_grouped_batches(self.lengths, self.global_size, self.seed, epoch)
        kept = [b for b in batches if len(b) >= self.world_size]  # so that no rank's slice is empty
        if not kept:
            raise MedsumError(f"{len(self.lengths)} training examples cannot be shared by {self.world_size} processes")
        return kept

    def _global_batch(self, index: int) -> list[int]:
        if index < self._offset:
            self._rewind()
        while index - self._offset >= len(self._batches):
            self._offset += len(self._batches)
            self._epoch += 1
            self._batches = self.epoch_batches(self._epoch)
        return self._batches[index - self._offset]

    def _rewind(self) -> None:
        self._epoch, self._offset = 0, 0
        self._batches = self.epoch_batches(0)


def total_steps(cfg: RunConfig, sampler: MicroBatchSampler) -> tuple[int, int]:
    """(optimizer steps to run, optimizer steps per epoch): an epoch is one pass over the sampler's micro-batches
    (as in transformers, a partial accumulation at an epoch's end does not count)."""
    per_epoch = max(1, sampler.micro_batches_per_epoch // cfg.train.grad_accum)
    steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    return steps, per_epoch
