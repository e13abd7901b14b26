"""Prepared data on disk: Arrow files written in batches, verified on every open, shared between processes.

An entry is a folder ``<root>/<key>/`` holding ``data.arrow`` (Arrow IPC stream, the format ``datasets`` memory-maps)
and ``meta.json`` (rows, bytes and an xxh64 checksum of the Arrow file, plus what the builder recorded). It is built in
a staging folder and renamed into place, so a reader never sees half an entry. Opening re-checks size and checksum:
a damaged entry (a crash mid-copy, a full disk, a stray edit) is deleted and rebuilt, never trusted. One process
builds an entry while the others wait on a file lock and then map it (``--nproc N``, parallel study runs), so memory
does not grow with the number of processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

DATA_FILE = "data.arrow"
META_FILE = "meta.json"
CHECKSUM_CHUNK = 1 << 24


def file_checksum(path: Path) -> str:
    import xxhash

    digest = xxhash.xxh64()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHECKSUM_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_meta(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.json when the entry is whole (its Arrow file has the recorded size and checksum), else None."""
    try:
        meta = json.loads((entry / META_FILE).read_text(encoding="utf-8"))
        data = entry / DATA_FILE
        if data.stat().st_size != meta["bytes"] or file_checksum(data) != meta["xxh64"]:
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_dataset(entry: Path):
    """The entry's table, memory-mapped (nothing is read into memory until used)."""
    import datasets

    return datasets.Dataset.from_file(str(entry / DATA_FILE))


@contextlib.contextmanager
def _exclusive(lock_path: Path, waiting_message: str) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting_message, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_batches(path: Path, schema: Any, batches: Iterable[Any]) -> int:
    """Writes pyarrow RecordBatches of ``schema`` to one Arrow stream file; returns the number of rows written."""
    import pyarrow as pa

    rows = 0
    with open(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def open_or_build(entry: Path, build: Callable[[Path], dict[str, Any]], what: str) -> tuple[Path, dict[str, Any]]:
    """The entry folder and its meta, built first when absent or damaged. ``build(data_file)`` writes the Arrow
    file and returns what to record in meta.json (besides rows, bytes and checksum, which are measured here)."""
    meta = read_meta(entry)
    if meta is not None:
        return entry, meta
    with _exclusive(entry.with_name(entry.name + ".lock"), f"waiting for another process preparing {what}"):
        meta = read_meta(entry)  # built by the process that held the lock
        if meta is not None:
            return entry, meta
        staging = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            recorded = build(staging / DATA_FILE)
            data = staging / DATA_FILE
            meta = {**recorded, "bytes": data.stat().st_size, "xxh64": file_checksum(data)}
            (staging / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            shutil.rmtree(entry, ignore_errors=True)  # a damaged entry
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"prepared {what}: {meta.get('rows', 0):,} rows in {seconds:.1f} s ({meta.get('rows', 0) / seconds:,.0f}/s; "
          f"{meta['bytes'] / 2**20:,.1f} MiB in {entry})", flush=True)
    return entry, meta


def progress_bar(total: int | None, what: str, enabled: bool, unit: str = "ex"):
    """A progress bar with the rate and (when the total is known) the time left, on a terminal only: in a log or
    a pipe the one-line summary that open_or_build prints says the same without the carriage-return noise."""
    import sys

    from tqdm.auto import tqdm

    shown = enabled and sys.stderr.isatty()
    return tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "B", disable=not shown, dynamic_ncols=True,
                mininterval=1.0)
