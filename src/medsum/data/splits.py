"""The train/validation/test splits as memory-mapped Arrow tables (local files prepared once, hub datasets as loaded).

Split rule for a single file: rows are shuffled with ``random.Random(data.split_seed)`` and cut 80/10/10
(train/validation/test), so the split never depends on the training seed. Caps (``max_train_examples``,
``max_eval_examples``) take the first N rows of a split in file order, so every seed sees the same test examples;
a capped split file is read only up to its cap.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medsum.config import DataConfig
from medsum.data import store
from medsum.data.records import LOCAL_SUFFIXES, Example, records, suffix, to_example
from medsum.errors import MedsumError

SPLITS = ("train", "validation", "test")
SINGLE_FILE_FRACTIONS = (0.8, 0.1, 0.1)
WRITE_BATCH_ROWS = 512
PREPARED_FORMAT = "raw-v1"  # bump when the layout of a prepared split changes


class Split(store.TableRows):
    """A split's examples over an Arrow table: ``len``, indexing (an Example; a slice gives a list), and batched
    iteration, without holding the texts in memory. ``fingerprint`` identifies the content (the tokenize cache key).

    A split backed by Arrow files (a prepared local file; a hub split as ``datasets`` cached it) also knows them and
    which of their rows it holds (``rows``: None for all, else increasing row numbers over the files in order):
    iterating then reads the files in batches instead of through the memory map,
    because every mapped page that a pass touches counts in the process's resident memory (3.4 GB for 120,000
    PubMed articles) while pages read into a buffer are freed batch by batch.
    """

    def __init__(self, table, name: str, fingerprint: str, columns: tuple[str | None, str, str] = ("id", "source",
                                                                                                "target"),
                 arrow_files: list[Path] | None = None, rows: Sequence[int] | None = None):
        self.table, self.name, self.fingerprint, self.columns = table, name, fingerprint, columns
        self.arrow_files, self.rows = arrow_files, rows

    def _example(self, row: dict[str, Any], index: int) -> Example:
        id_column, source, target = self.columns
        example_id = row.get(id_column) if id_column else None
        return Example(str(example_id) if example_id not in (None, "") else f"{self.name}-{index}",
                       row[source], row[target])

    def _row(self, position: int) -> Example:
        return self._example(self.table[position], position)

    def _row_dicts(self) -> Iterator[dict[str, Any]]:
        if not self.arrow_files:
            for batch in self.table.iter(batch_size=WRITE_BATCH_ROWS):
                yield from (dict(zip(batch, values)) for values in zip(*batch.values()))
            return
        yield from _read_rows(self.arrow_files, self.rows)

    def batches(self, size: int) -> Iterator[list[Example]]:
        batch: list[Example] = []
        for index, row in enumerate(self._row_dicts()):
            batch.append(self._example(row, index))
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def __iter__(self) -> Iterator[Example]:
        for batch in self.batches(WRITE_BATCH_ROWS):
            yield from batch

    def select(self, rows: Sequence[int], fingerprint: str) -> Split:
        """The split of these (increasing) row numbers of this one."""
        chosen = rows if self.rows is None else [self.rows[i] for i in rows]
        return Split(self.table.select(rows), self.name, fingerprint, self.columns, self.arrow_files, chosen)

    def head(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return self.select(range(n), _derived(self.fingerprint, "head", n))


def _read_rows(arrow_files: list[Path], rows: Sequence[int] | None) -> Iterator[dict[str, Any]]:
    """The rows of Arrow stream files read in order (all, or the given increasing row numbers), batch by batch."""
    import pyarrow as pa

    wanted = iter(rows) if rows is not None else None
    next_row = next(wanted, None) if wanted is not None else 0
    offset = 0
    for arrow_file in arrow_files:
        with pa.OSFile(str(arrow_file)) as handle:
            for record_batch in pa.ipc.open_stream(handle):
                if next_row is None:
                    return
                end = offset + record_batch.num_rows
                if wanted is None:
                    yield from record_batch.to_pylist()
                elif next_row < end:
                    picked = []
                    while next_row is not None and next_row < end:
                        picked.append(next_row - offset)
                        next_row = next(wanted, None)
                    yield from record_batch.take(picked).to_pylist()
                offset = end


def _derived(*parts: Any) -> str:
    import xxhash

    return xxhash.xxh3_128_hexdigest(json.dumps(parts, default=str).encode())


# ---------------------------------------------------------------------------------------------- local files


def _example_batches(path: Path, cfg: DataConfig, label: str, cap: int | None, bar) -> Iterator[list[Example]]:
    """The file's Examples in batches (the first ``cap`` only); ids checked unique, the file position reported."""
    first_seen: dict[str, int] = {}
    batch: list[Example] = []
    for line_number, record in records(path, lambda position: bar.update(position - bar.n)):
        example = to_example(record, cfg.source_field, cfg.target_field, f"{path} line {line_number}",
                             f"{label}-{len(first_seen)}")
        if example.id in first_seen:  # reports and paired tests key on the id
            raise MedsumError(f"{path} line {line_number}: id {example.id!r} repeats line {first_seen[example.id]}")
        first_seen[example.id] = line_number
        batch.append(example)
        if len(first_seen) == cap or len(batch) == WRITE_BATCH_ROWS:
            rate = len(first_seen) / max(bar.format_dict["elapsed"], 1e-3)
            bar.set_postfix_str(f"{len(first_seen):,} examples, {rate:,.0f} examples/s", refresh=False)
            yield batch
            batch = []
        if len(first_seen) == cap:
            return
    if batch:
        yield batch


def _write_file(path: Path, cfg: DataConfig, label: str, cap: int | None, out: Path, show: bool) -> dict[str, Any]:
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("target", pa.string())])

    def arrow_batches(bar):
        for batch in _example_batches(path, cfg, label, cap, bar):
            yield pa.RecordBatch.from_pydict({"id": [e.id for e in batch], "source": [e.source for e in batch],
                                              "target": [e.target for e in batch]}, schema=schema)

    with store.progress_bar(path.stat().st_size, f"reading {path.name}", show, unit="B") as bar:
        rows = store.write_batches(out, schema, arrow_batches(bar))
    if rows == 0:
        raise MedsumError(f"{path}: no records (the file is empty)")
    return {"source": str(path), "rows": rows}


def read_split_file(path: Path, cfg: DataConfig, label: str, cap: int | None, cache: Path, show: bool) -> Split:
    """One local file as a Split, prepared once into the cache (keyed by the file's identity and what is read)."""
    stat = path.stat()
    key = _derived(PREPARED_FORMAT, str(path.resolve()), stat.st_size, stat.st_mtime_ns, cfg.source_field,
                   cfg.target_field, label, cap)[:24]
    entry, meta = store.open_or_build(cache / key, lambda out: _write_file(path, cfg, label, cap, out, show),
                                      path.name)
    # the Arrow file's checksum identifies the content: the same rows always write the same bytes
    return Split(store.open_dataset(entry), label, _derived(PREPARED_FORMAT, meta["xxh64"], meta["rows"]),
                 arrow_files=[entry / store.DATA_FILE])


def _split_file_names(path: Path) -> dict[str, Path]:
    found = {}
    for split in SPLITS:
        for candidate in (path / f"{split}{s}" for s in LOCAL_SUFFIXES):
            if candidate.is_file():
                found[split] = candidate
                break
    return found


def _split_single(everything: Split, seed: int) -> dict[str, Split]:
    n = len(everything)
    if n < 3:
        raise MedsumError(f"a single data file needs at least 3 records to split, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(n * SINGLE_FILE_FRACTIONS[1]))
    n_test = max(1, round(n * SINGLE_FILE_FRACTIONS[2]))
    n_train = n - n_val - n_test
    parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    # within a split keep file order, so that "the first N rows" means the same as for a directory
    return {split: everything.select(sorted(indices), _derived(everything.fingerprint, split, seed))
            for split, indices in parts.items()}


# ---------------------------------------------------------------------------------------------- hub datasets


def _load_hub(cfg: DataConfig) -> dict[str, Split]:
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
        table = loaded[split]
        for key, name in (("data.source_field", cfg.source_field), ("data.target_field", cfg.target_field)):
            if name not in table.column_names:
                raise MedsumError(f"{cfg.path}[{split}]: no {name!r} column ({key}; its columns: "
                                  f"{', '.join(table.column_names)})")
            if getattr(table.features[name], "dtype", None) not in ("string", "large_string"):
                raise MedsumError(f"{cfg.path}[{split}]: column {name!r} is not text ({key})")
        id_column = "id" if "id" in table.column_names else None
        # read in batches from datasets' own cache files when the split is exactly their rows
        files = [Path(f["filename"]) for f in table.cache_files] if table._indices is None else None
        out[split] = Split(table, split, _derived(table._fingerprint, cfg.source_field, cfg.target_field),
                           (id_column, cfg.source_field, cfg.target_field), files or None)
    return out


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "/", "~"))


# ---------------------------------------------------------------------------------------------- all splits


def load_splits(cfg: DataConfig, cache: Path | None = None, show_progress: bool = False) -> dict[str, Split]:
    """The train/validation/test splits, capped as configured (local files prepared into ``cache``, by default
    the medsum cache's ``data/`` folder)."""
    from medsum.models import cache_dir

    cache = cache or cache_dir() / "data"
    path = Path(cfg.path).expanduser()
    caps = {"train": cfg.max_train_examples or None, "validation": cfg.max_eval_examples or None,
            "test": cfg.max_eval_examples or None}
    if path.is_dir():
        files = _split_file_names(path)
        missing = [s for s in SPLITS if s not in files]
        if missing:
            raise MedsumError(f"data.path: {path} has no {'/'.join(missing)} split file "
                              f"(expected {{train,validation,test}}.jsonl[.gz], .csv or .parquet)")
        splits = {split: read_split_file(files[split], cfg, split, caps[split], cache, show_progress)
                  for split in SPLITS}
    elif path.is_file():
        if not suffix(path):
            raise MedsumError(f"data.path: {path} is not a .jsonl, .jsonl.gz, .csv or .parquet file")
        splits = _split_single(read_split_file(path, cfg, "all", None, cache, show_progress), cfg.split_seed)
    elif _looks_like_hub_id(cfg.path):
        splits = _load_hub(cfg)
    else:
        raise MedsumError(f"data.path: no such file or directory: {cfg.path}")
    return {split: examples.head(caps[split]) for split, examples in splits.items()}

