"""The micro-batch sampler: which examples each process trains on at each optimizer step, across epoch boundaries,
gradient accumulation and world sizes."""

from __future__ import annotations

import types

import pytest

from medsum.data import length_grouped_batches
from medsum.train.sampler import MicroBatchSampler, total_steps

LENGTHS = [(i * 37) % 23 + 1 for i in range(11)]

# (batch_size, grad_accum, world_size, seed) -> optimizer steps per epoch, and each rank's indices for steps 0, 1, ...
# as the trainer's micro_batches_for_step gave them at 05185f0 (before the sampler became a class)
BEFORE = [
    ((2, 1, 1, 0), 6, {0: [[[9, 4]], [[8, 3]], [[7, 2]], [[0]], [[6, 1]], [[10, 5]], [[9, 4]], [[0]]]}),
    ((2, 3, 1, 5), 2, {0: [[[8, 3], [10, 5], [9, 4]], [[7, 2], [0], [6, 1]], [[9, 4], [8, 3], [0]],
                           [[6, 1], [10, 5], [7, 2]], [[7, 2], [6, 1], [0]]]}),
    ((1, 2, 2, 3), 2, {0: [[[6], [10]], [[9], [7]], [[8], [8]], [[9], [10]], [[7], [6]], [[7], [8]]],
                       1: [[[1], [5]], [[4], [2]], [[3], [3]], [[4], [5]], [[2], [1]], [[2], [3]]]}),
    ((3, 2, 2, 7), 1, {0: [[[8, 6, 9], [7, 10, 0]]] * 4, 1: [[[3, 1, 4], [2, 5]]] * 4}),
    ((2, 1, 3, 1), 2, {0: [[[7, 5]], [[8, 1]], [[7, 5]], [[8, 1]], [[7, 5]]],
                       1: [[[2, 0]], [[3, 9]], [[2, 0]], [[3, 9]], [[2, 0]]],
                       2: [[[10]], [[6, 4]], [[10]], [[6, 4]], [[10]]]}),
]


def config(batch_size: int, grad_accum: int, seed: int, max_steps=None, epochs: float = 1.0):
    return types.SimpleNamespace(seed=seed, train=types.SimpleNamespace(batch_size=batch_size, grad_accum=grad_accum,
                                                                       max_steps=max_steps, epochs=epochs))


@pytest.mark.parametrize("settings, per_epoch, expected", BEFORE)
def test_the_same_indices_as_before(settings, per_epoch, expected):
    batch_size, grad_accum, world, seed = settings
    for rank, steps in expected.items():
        sampler = MicroBatchSampler(LENGTHS, batch_size, grad_accum, seed, rank, world)
        assert [sampler.for_step(step) for step in range(len(steps))] == steps
        assert total_steps(config(batch_size, grad_accum, seed), sampler) == (per_epoch, per_epoch)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("grad_accum", [1, 2, 3])
def test_each_epoch_shares_every_example_once_across_ranks(world, grad_accum):
    """The ranks' micro-batches of one epoch are disjoint and cover the examples (but a global batch smaller than the
    world size, which would leave a rank empty-handed)."""
    samplers = [MicroBatchSampler(LENGTHS, 2, grad_accum, 4, rank, world) for rank in range(world)]
    per_epoch = samplers[0].micro_batches_per_epoch
    for epoch in range(3):
        kept = [i for batch in length_grouped_batches(LENGTHS, 2 * world, 4, epoch) if len(batch) >= world
                for i in batch]
        seen = []
        for index in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            for sampler in samplers:
                step, k = divmod(index, grad_accum)
                micro = sampler.for_step(step)[k]
                assert micro, "no rank is ever given an empty micro-batch"
                seen += micro
        assert sorted(seen) == sorted(kept)


def test_a_step_accumulates_consecutive_micro_batches_across_an_epoch_boundary():
    single = MicroBatchSampler(LENGTHS, 2, 1, 8)
    accumulating = MicroBatchSampler(LENGTHS, 2, 4, 8)
    flat = [single.for_step(i)[0] for i in range(12)]
    assert single.micro_batches_per_epoch == 6  # so step 1 of the accumulating sampler spans epochs 0 and 1
    assert [accumulating.for_step(step) for step in range(3)] == [flat[0:4], flat[4:8], flat[8:12]]
    assert flat[6:12] != flat[0:6], "a new epoch draws a new order"


def test_a_resumed_sampler_continues_where_the_first_one_was():
    """The data position is the step number: a fresh sampler (a resumed run) gives the same batches, and so does one
    asked for an earlier step."""
    running = MicroBatchSampler(LENGTHS, 3, 2, 2, 1, 2)
    history = [running.for_step(step) for step in range(9)]
    assert MicroBatchSampler(LENGTHS, 3, 2, 2, 1, 2).for_step(7) == history[7]
    assert running.for_step(1) == history[1]


def test_total_steps_from_epochs_or_max_steps():
    sampler = MicroBatchSampler(LENGTHS, 2, 2, 0)
    assert total_steps(config(2, 2, 0, epochs=2.5), sampler) == (8, 3)  # 6 micro-batches: 3 steps an epoch
    assert total_steps(config(2, 2, 0, max_steps=5), sampler) == (5, 3)
    assert total_steps(config(2, 20, 0), sampler) == (1, 1)  # fewer micro-batches than one accumulation
