"""A test pass that survives a crash: each finished generation batch is appended to the run directory's
``test_predictions.partial.jsonl``; the same command started again reuses them and generates only the rest.

Reuse is exact only if the rest of the pass is generated as it would have been: the same weights, settings,
examples and batches. Every line therefore carries a key over the trained weights (their bytes), the generation
settings, the batch size, the test ids and the number of processes; lines of another key (a run trained again to
different weights, other settings) are ignored. A batch is reused only when all of its predictions are there (a
line torn by the crash is ignored, and its batch generated again).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from medsum import rundir

PARTIAL_FILE = rundir.PARTIAL_PREDICTIONS


def weights_fingerprint(model) -> str:
    """A hash of the bytes of every trainable parameter (what training changed)."""
    import torch
    import xxhash

    digest = xxhash.xxh3_128()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def pass_key(model, settings: dict[str, Any], batch_size: int, ids: list[str], world_size: int) -> str:
    import xxhash

    described = json.dumps([weights_fingerprint(model), settings, batch_size, ids, world_size], sort_keys=True)
    return xxhash.xxh3_128_hexdigest(described.encode())


class PartialPredictions:
    """The predictions of a test pass so far, keyed by example index."""

    def __init__(self, run_dir: Path, key: str, ids: list[str] | None = None):
        """``ids``: the test examples' ids by index (each appended line records its example's id)."""
        self.path, self.key, self.ids = Path(run_dir) / PARTIAL_FILE, key, list(ids or [])

    def load(self) -> dict[int, tuple[str, int]]:
        """{example index: (prediction, generated tokens)} of this pass's earlier lines."""
        done = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return done
        for line in lines:
            try:
                row = json.loads(line)
                if row["key"] == self.key:
                    done[int(row["index"])] = (str(row["prediction"]), int(row["tokens"]))
            except (ValueError, KeyError, TypeError):  # a line torn by the crash
                continue
        return done

    def append(self, rows: list[tuple[int, str, str, int]]) -> None:
        """Appends (index, id, prediction, generated tokens) rows, durably, under a lock (processes share the file)."""
        text = "".join(json.dumps({"key": self.key, "index": index, "id": example_id, "prediction": prediction,
                                   "tokens": tokens}) + "\n" for index, example_id, prediction, tokens in rows)
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
