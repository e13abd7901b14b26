"""Batches for training: length-grouped shuffles (little padding) and collation with dynamic padding."""

from __future__ import annotations

import random
from typing import Any


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                           group_factor: int = 50) -> list[list[int]]:
    """Shuffled batches of similar-length examples (less padding), a deterministic function of (seed, epoch).

    The order is shuffled, cut into mega-chunks of ``group_factor`` batches, each sorted by length and cut into
    batches; the batches are then shuffled again (the idea of transformers' ``group_by_length``).
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * group_factor
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[dict[str, list[int]]], pad_id: int, with_labels: bool = True) -> dict[str, Any]:
    """Pads to the longest row in the batch (dynamic padding); label padding is -100 (ignored by the loss)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        attention[i, : len(row["input_ids"])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if with_labels:
        label_width = max(len(r["labels"]) for r in rows)
        labels = torch.full((len(rows), label_width), -100, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row["labels"])] = torch.tensor(row["labels"])
        batch["labels"] = labels
    return batch
