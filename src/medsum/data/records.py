"""Reading records from local files, one at a time, with errors that name the file and the line.

Files are streamed (JSONL line by line, CSV in chunks, Parquet in row batches): a 1 GB split never sits in memory,
and a bad record deep in it is still one line naming the file and its line number.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum.errors import MedsumError

LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
CSV_CHUNK_ROWS = 1000
Progress = Callable[[int], None]  # told the file position (bytes read so far) now and then


@dataclass(frozen=True)
class Example:
    id: str
    source: str
    target: str


def suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in LOCAL_SUFFIXES if name.endswith(s)), "")


def _records_jsonl(path: Path, progress: Progress) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        for line_number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8"), 1):
            if line_number % 256 == 0:
                progress(raw.tell())
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as err:
                raise MedsumError(f"{path} line {line_number}: not valid JSON ({err.msg})") from None


def _records_csv(path: Path, progress: Progress) -> Iterator[tuple[int, Any]]:
    import pandas as pd

    line_number = 1  # line 1 is the header
    with pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CSV_CHUNK_ROWS) as chunks:
        for chunk in chunks:
            for record in chunk.to_dict(orient="records"):
                line_number += 1
                yield line_number, record


def _records_parquet(path: Path, progress: Progress) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=CSV_CHUNK_ROWS):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def records(path: Path, progress: Progress = lambda position: None) -> Iterator[tuple[int, Any]]:
    """(line or row number, record) for each record of a local file; unreadable files raise MedsumError."""
    reader = {".csv": _records_csv, ".parquet": _records_parquet}.get(suffix(path), _records_jsonl)
    try:
        yield from reader(path, progress)
    except MedsumError:
        raise
    except Exception as err:  # gzip, UTF-8, pandas and pyarrow raise many types for unreadable files
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise MedsumError(f"{path}: cannot read ({first_line})") from None


def to_example(record: Any, source_field: str, target_field: str, where: str, fallback_id: str) -> Example:
    """The record as an Example; a record without the configured text fields names ``where`` and the setting."""
    if not isinstance(record, dict):
        raise MedsumError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, name in (("data.source_field", source_field), ("data.target_field", target_field)):
        if name not in record:
            raise MedsumError(f"{where}: record has no {name!r} field ({key}; its fields: {', '.join(record)})")
        if not isinstance(record[name], str):
            raise MedsumError(f"{where}: field {name!r} is not text ({key})")
    example_id = record.get("id")
    return Example(str(example_id) if example_id not in (None, "") else fallback_id,
                   record[source_field], record[target_field])
