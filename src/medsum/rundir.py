"""The run directory, documented once: its files, whether a run is finished, the metrics.json schema, and the one
way medsum writes a file or a folder (atomically: a crash never leaves half of one behind).

A run directory (written by ``medsum.train``; read by the study, the report and the service):
    config.yaml          the fully resolved config
    train_log.jsonl      one line per logged step (step, loss, learning_rate, world_size, ...) and per validation
    checkpoints/step-N/  resumable checkpoints (train.save_every)
    adapter/ | model/    the trained weights: a PEFT adapter, or a save_pretrained model for full fine-tuning
    base_model/          a tiny model's base (model.name=tiny, tiny-bart, ...), so the run directory is self-contained
    tokenizer/           the tokenizer
    test_predictions.partial.jsonl   the test pass's finished batches while it runs (reused after a crash)
    predictions.jsonl    one line per test example: id, prediction, reference, its ROUGE, and "measures"
                         (``medsum.measures.measure``: length, novel n-grams, coverage, numbers, readability), and
                         "model_metrics" where evaluate.* names local models (``medsum.model_metrics``)
    metrics.json         written last (``Metrics``): its presence marks the run finished
An extractive baseline's run directory (``medsum.baselines``, ``runs/baseline__<name>`` in a study) holds
config.yaml (its data settings), predictions.jsonl and metrics.json (``BaselineMetrics``) only.
What a study adds:
    study.json           its place in the study: {"study", "grid": bool, "sweeps": {name: {key, value}}}
    running.json         {"pid", "host", "started"} while a process trains the run
    error.txt            why the last attempt failed (first line: the message; then the traceback)
    interrupted.json     {"signal", "step", "checkpoint"}: a stop signal (SIGTERM, SIGINT) stopped the last attempt
                         after writing a checkpoint; the next ``study run`` resumes it
    mlflow.db            (in the study directory) the study's MLflow store when its runs set train.report_to
Status, first match wins: done (metrics.json) > running (running.json of a live process) > failed (error.txt) >
interrupted (interrupted.json) > pending.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsum.errors import MedsumError

CONFIG = "config.yaml"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
MODEL = "model"
BASE_MODEL = "base_model"
TOKENIZER = "tokenizer"
PARTIAL_PREDICTIONS = "test_predictions.partial.jsonl"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
MEMBERSHIP = "study.json"
RUNNING = "running.json"
ERROR = "error.txt"
INTERRUPTED = "interrupted.json"
SEARCH = "search"  # a study's DIR/runs/search/<model>/<method>/trial-N/: the search's trials, run directories too
# what a run writes, all removed when it starts over (--force); a study's membership stays
OUTPUTS = (CHECKPOINTS, ADAPTER, MODEL, BASE_MODEL, TOKENIZER, PREDICTIONS, METRICS, TRAIN_LOG, CONFIG, ERROR,
           PARTIAL_PREDICTIONS, INTERRUPTED)
STATUSES = ("done", "running", "failed", "interrupted", "pending")


@dataclass
class Metrics:
    """metrics.json: what ran, what it measured, and with which versions (written last, so only by finished runs)."""

    model: str
    method: str
    method_config: dict[str, Any]  # the method's settings, plus what applying it resolved (e.g. target modules)
    seed: int
    params: dict[str, Any]  # base, trainable, total, trainable_pct
    validation: dict[str, Any] = field(default_factory=dict)  # the best validation ROUGE, best_step, evaluations
    # ROUGE means, gen_len, empty_predictions, examples, reused_predictions, and "measures": the means of the
    # predictions' measures (``medsum.measures.means``; absent in runs from before them until `medsum evaluate`)
    test: dict[str, Any] = field(default_factory=dict)
    # train_seconds, train_tokens_per_second, peak_memory_bytes, eval_seconds, generate_tokens_per_second,
    # adapter_bytes (the trained weights' size), precision
    efficiency: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    hardware: dict[str, Any] = field(default_factory=dict)
    rouge: dict[str, Any] = field(default_factory=dict)  # how ROUGE was computed
    versions: dict[str, str] = field(default_factory=dict)
    status: str = "done"


@dataclass
class BaselineMetrics:
    """metrics.json of an extractive baseline (``medsum.baselines``): the fields of a run that a report reads, and
    what the baseline is; no training, so no validation, efficiency or hardware."""

    model: str  # "extractive": no model
    method: str  # the baseline's name (lead, lexrank, textrank, oracle)
    baseline: dict[str, Any]  # name, description, word_budget and where it came from, seconds
    seed: None
    params: dict[str, Any]
    test: dict[str, Any]  # as a trained run's: ROUGE means, empty_predictions, examples, "measures"
    rouge: dict[str, Any]
    versions: dict[str, str]
    status: str = "done"


# ---------------------------------------------------------------------------------------------- reading


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / METRICS).is_file()


def status(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return "done"
    if running_process(run_dir) is not None:
        return "running"
    if (run_dir / ERROR).is_file():
        return "failed"
    if (run_dir / INTERRUPTED).is_file():
        return "interrupted"
    return "pending"


def running_process(run_dir: str | Path) -> dict | None:
    """The running.json of a process still training this run; None when there is none or it died.

    A marker written on another host cannot be checked from here and counts as running; ``medsum study run``
    clears markers left by dead processes when it starts (it holds the study lock, so none of them can be live).
    """
    marker = read_json(Path(run_dir) / RUNNING)
    if not marker:
        return None
    if marker.get("host") != socket.gethostname():
        return marker
    try:
        os.kill(int(marker.get("pid", -1)), 0)
    except (OSError, ValueError):
        return None
    return marker


def error_message(run_dir: str | Path) -> str:
    """The first line of error.txt (the failure's one-line message), or ''."""
    try:
        lines = (Path(run_dir) / ERROR).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return lines[0] if lines else ""


def read_json(path: str | Path) -> dict:
    """A JSON object from a file; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file ([] when it is missing); a line that is not one names the file and
    line (a damaged run directory is one clear error, not a traceback)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise MedsumError(f"{path} line {number}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise MedsumError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_config(run_dir: str | Path) -> dict:
    """config.yaml as a tree of plain values; {} when there is none."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


# ---------------------------------------------------------------------------------------------- writing


def write_config(run_dir: str | Path, tree: dict) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(tree, sort_keys=False))


def write_predictions(run_dir: str | Path, rows: list[dict]) -> None:
    atomic_write_text(Path(run_dir) / PREDICTIONS, "".join(json.dumps(row) + "\n" for row in rows))


def write_metrics(run_dir: str | Path, metrics: Metrics | BaselineMetrics) -> dict:
    """Writes metrics.json (which marks the run finished: write it last) and returns it as a dict."""
    data = dataclasses.asdict(metrics)
    atomic_write_json(Path(run_dir) / METRICS, data)
    return data


def append_jsonl(path: str | Path, row: dict) -> None:
    """One line more in a log (a line cut short by a crash is skipped by whoever reads the log back)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def clear_outputs(run_dir: str | Path) -> None:
    """Removes everything a run wrote, so that it starts over."""
    for name in OUTPUTS:
        target = Path(run_dir) / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes a file so that a crash never leaves it half-written: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be read by collaborators
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def atomic_dir(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """A hidden temporary sibling of ``target`` to fill; it becomes ``target`` only when the block succeeds.

    ``replace``: an existing ``target`` is swapped out whole. Otherwise a ``target`` that another process finished
    first is kept and this one discarded (concurrent builders of the same folder, e.g. DDP ranks, race harmlessly).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        yield staging
        _make_readable(staging)
        if replace:
            _swap_in(staging, target)
        else:
            _rename_unless_present(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, target: Path) -> None:
    previous = target.with_name(f".{target.name}.old")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def _rename_unless_present(staging: Path, target: Path) -> None:
    try:
        os.replace(staging, target)  # fails when another process's target (a non-empty folder) is already there
    except OSError:
        if not target.is_dir():
            raise


def _make_readable(folder: Path) -> None:
    """mkdtemp (0700) and safetensors (0600) would leave a folder readable only by whoever wrote it."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o777 & ~umask if path.is_dir() else 0o666 & ~umask)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
