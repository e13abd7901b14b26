"""Data: read the splits (local JSONL/CSV/Parquet or a hub dataset), tokenize once (cached), batch and collate.

Split rule for a single file: rows are shuffled with ``random.Random(data.split_seed)`` and cut 80/10/10
(train/validation/test), so the split never depends on the training seed. Caps (``max_train_examples``,
``max_eval_examples``) take the first N rows of a split in file order, so every seed sees the same test examples.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum.config import DataConfig
from medsum.errors import MedsumError

SPLITS = ("train", "validation", "test")
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
SINGLE_FILE_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class Example:
    id: str
    source: str
    target: str


# ---------------------------------------------------------------------------------------------- reading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in LOCAL_SUFFIXES if name.endswith(s)), "")


def _records_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise MedsumError(f"{path} line {line_number}: not valid JSON ({err.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise MedsumError(f"{path}: cannot read ({err})") from None


def _records_table(path: Path) -> Iterator[tuple[int, Any]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False) if _suffix(path) == ".csv" \
            else pd.read_parquet(path)
    except Exception as err:  # pandas raises many types for unreadable files
        raise MedsumError(f"{path}: cannot read ({str(err).splitlines()[0]})") from None
    first_line = 2 if _suffix(path) == ".csv" else 1  # CSV: line 1 is the header
    for offset, record in enumerate(frame.to_dict(orient="records")):
        yield first_line + offset, record


def read_examples(path: Path, cfg: DataConfig, split: str, limit: int | None = None) -> list[Example]:
    """The records of one local file as Examples (the first ``limit`` only, when given: the rest of the file is
    not read); a bad record names the file and line."""
    reader = _records_table if _suffix(path) in (".csv", ".parquet") else _records_jsonl
    examples, first_seen = [], {}
    for line_number, record in reader(path):
        example = _to_example(record, cfg, f"{path} line {line_number}", f"{split}-{len(examples)}")
        if example.id in first_seen:  # reports and paired tests key on the id
            raise MedsumError(f"{path} line {line_number}: id {example.id!r} repeats line {first_seen[example.id]}")
        first_seen[example.id] = line_number
        examples.append(example)
        if len(examples) == limit:
            break
    if not examples:
        raise MedsumError(f"{path}: no records (the file is empty)")
    return examples


def _to_example(record: Any, cfg: DataConfig, where: str, fallback_id: str) -> Example:
    if not isinstance(record, dict):
        raise MedsumError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, field in (("data.source_field", cfg.source_field), ("data.target_field", cfg.target_field)):
        if field not in record:
            raise MedsumError(f"{where}: record has no {field!r} field ({key}; its fields: {', '.join(record)})")
        if not isinstance(record[field], str):
            raise MedsumError(f"{where}: field {field!r} is not text ({key})")
    example_id = record.get("id")
    return Example(str(example_id) if example_id not in (None, "") else fallback_id,
                   record[cfg.source_field], record[cfg.target_field])


def _split_file(path: Path) -> dict[str, Path]:
    found = {}
    for split in SPLITS:
        for suffix in LOCAL_SUFFIXES:
            candidate = path / f"{split}{suffix}"
            if candidate.is_file():
                found[split] = candidate
                break
    return found


def _split_single(examples: list[Example], seed: int) -> dict[str, list[Example]]:
    if len(examples) < 3:
        raise MedsumError(f"a single data file needs at least 3 records to split, got {len(examples)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * SINGLE_FILE_FRACTIONS[1]))
    n_test = max(1, round(len(order) * SINGLE_FILE_FRACTIONS[2]))
    n_train = len(order) - n_val - n_test
    parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    # within a split keep file order, so that "the first N rows" means the same as for a directory
    return {split: [examples[i] for i in sorted(idx)] for split, idx in parts.items()}


def _load_hub(cfg: DataConfig) -> dict[str, list[Example]]:
    import datasets

    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_dataset(cfg.path)
    except Exception as err:  # offline, unknown id, bad config: datasets raises many types
        raise MedsumError(
            f"data.path: {cfg.path!r} is not a local file or directory, and loading it from the dataset hub "
            f"failed ({str(err).splitlines()[0][:160]})"
        ) from None
    out = {}
    for split in SPLITS:
        if split not in loaded:
            raise MedsumError(f"data.path: hub dataset {cfg.path!r} has no {split!r} split (has {list(loaded)})")
        out[split] = [_to_example(record, cfg, f"{cfg.path}[{split}] row {i}", f"{split}-{i}")
                      for i, record in enumerate(loaded[split])]
    return out


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~"))


def load_splits(cfg: DataConfig) -> dict[str, list[Example]]:
    """The train/validation/test Examples, capped as configured."""
    path = Path(cfg.path).expanduser()
    caps = {"train": cfg.max_train_examples or None, "validation": cfg.max_eval_examples or None,
            "test": cfg.max_eval_examples or None}
    if path.is_dir():
        files = _split_file(path)
        missing = [s for s in SPLITS if s not in files]
        if missing:
            raise MedsumError(f"data.path: {path} has no {'/'.join(missing)} split file "
                              f"(expected {{train,validation,test}}.jsonl[.gz], .csv or .parquet)")
        splits = {split: read_examples(files[split], cfg, split, caps[split]) for split in SPLITS}
    elif path.is_file():
        if not _suffix(path):
            raise MedsumError(f"data.path: {path} is not a .jsonl, .jsonl.gz, .csv or .parquet file")
        splits = _split_single(read_examples(path, cfg, "all"), cfg.split_seed)
    elif _looks_like_hub_id(cfg.path):
        splits = _load_hub(cfg)
    else:
        raise MedsumError(f"data.path: no such file or directory: {cfg.path}")
    return {split: examples[: caps[split]] for split, examples in splits.items()}


# ---------------------------------------------------------------------------------------------- tokenizing


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what maps text to ids (vocabulary, normaliser, pre-tokenizer, post-processor), leaving out the
    truncation and padding state that each call to the tokenizer changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tokenizer.get_vocab().items()))
    else:
        # Serialised with truncation and padding switched off for the moment (then restored): hashing the
        # serialisation directly costs a few ms where parsing and re-dumping it cost ~40 ms at a 32k vocabulary.
        truncation, padding = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        try:
            text = backend.to_str()
        finally:
            if truncation is not None:
                backend.enable_truncation(**truncation)
            if padding is not None:
                backend.enable_padding(**padding)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _examples_fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        for text in (example.id, example.source, example.target):
            digest.update(text.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]


def tokenize(examples: list[Example], tokenizer, prefix: str, max_source_tokens: int, max_target_tokens: int,
             cache: Path | None = None) -> list[dict[str, list[int]]]:
    """``[{"input_ids", "labels"}]`` for the examples, read from the tokenize cache when the same tokenizer, texts,
    prefix and lengths were tokenized before (every seed and run of a study shares it)."""
    key = hashlib.sha256(json.dumps([tokenizer_fingerprint(tokenizer), _examples_fingerprint(examples), prefix,
                                     max_source_tokens, max_target_tokens, "v2"]).encode()).hexdigest()[:24]
    cached = cache / f"{key}.json" if cache else None
    if cached is not None and cached.is_file():
        try:  # JSON: lists of ints load ~5x faster than through torch.load's safe unpickler
            encoded = json.loads(cached.read_text(encoding="utf-8"))
            if len(encoded) == len(examples):
                return encoded
        except (OSError, ValueError):  # a damaged cache entry is rebuilt, never trusted
            pass
        cached.unlink(missing_ok=True)
    sources = tokenizer([prefix + e.source for e in examples], max_length=max_source_tokens, truncation=True)
    targets = tokenizer(text_target=[e.target for e in examples], max_length=max_target_tokens, truncation=True)
    encoded = [{"input_ids": s, "labels": t} for s, t in zip(sources["input_ids"], targets["input_ids"])]
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(encoded, handle, separators=(",", ":"))
        os.replace(tmp, cached)
    return encoded


# ---------------------------------------------------------------------------------------------- batching


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


def steps_per_epoch(n_examples: int, global_batch: int) -> int:
    return max(1, math.ceil(n_examples / global_batch))
