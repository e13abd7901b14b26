"""Reading a study's run directories: the only input of the report and of ``medsum study status``.

Files a study adds to a run directory (beside what ``medsum.train`` writes):
    study.json    which parts of the study the run belongs to: {"study", "grid": bool, "sweeps": {name: {key, value}}}
    running.json  {"pid", "host", "started"} while a process trains the run
    error.txt     why the last attempt failed (first line: the message; then the traceback)
Status, first match wins: done (metrics.json) > running (running.json of a live process) > failed (error.txt) >
pending.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from medsum.errors import MedsumError
from medsum.settings import flatten

MEMBERSHIP_FILE = "study.json"
RUNNING_FILE = "running.json"
ERROR_FILE = "error.txt"
NOT_VARIANT_KEYS = ("name", "output_dir", "seed")  # what differs between the seeds of one variant


@dataclass
class RunRecord:
    name: str
    path: Path
    status: str
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml, flattened to dotted keys
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json (done runs only)
    membership: dict[str, Any] = field(default_factory=dict)  # study.json
    error: str = ""

    @property
    def in_grid(self) -> bool:
        return bool(self.membership.get("grid", True))

    @property
    def variant(self) -> str:
        """The run's config without what changes between seeds: runs with the same variant are one table row."""
        return json.dumps({k: v for k, v in self.config.items() if k not in NOT_VARIANT_KEYS}, sort_keys=True,
                          default=str)

    @property
    def seed(self) -> Any:
        return self.metrics.get("seed", self.config.get("seed"))

    @cached_property
    def per_example(self) -> dict[str, dict[str, float]]:
        """Per-test-example scores from predictions.jsonl, by example id."""
        path = self.path / "predictions.jsonl"
        if not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {str(row["id"]): row for row in rows}


def load_runs(output: Path) -> list[RunRecord]:
    """Every run directory under ``output/runs/``, sorted by name; a study directory without one is an error."""
    runs_dir = Path(output) / "runs"
    if not runs_dir.is_dir():
        raise MedsumError(f"{output} holds no study (no runs/ folder); start one with medsum study run")
    return [read_run(path) for path in sorted(runs_dir.iterdir()) if path.is_dir() and not path.name.startswith(".")]


def read_run(path: Path) -> RunRecord:
    status = run_status(path)
    record = RunRecord(path.name, path, status, membership=_read_json(path / MEMBERSHIP_FILE))
    if (path / "config.yaml").is_file():
        record.config = flatten(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {})
    if status == "done":
        record.metrics = _read_json(path / "metrics.json")
    elif status == "failed":
        record.error = error_message(path)
    return record


def run_status(path: Path) -> str:
    if (path / "metrics.json").is_file():
        return "done"
    if running_process(path) is not None:
        return "running"
    if (path / ERROR_FILE).is_file():
        return "failed"
    return "pending"


def running_process(path: Path) -> dict | None:
    """The running.json of a process still training this run; None when there is none or it died.

    A marker written on another host cannot be checked from here and counts as running; ``medsum study run``
    clears markers left by dead processes when it starts (it holds the study lock, so none of them can be live).
    """
    marker = _read_json(path / RUNNING_FILE)
    if not marker:
        return None
    if marker.get("host") != socket.gethostname():
        return marker
    try:
        os.kill(int(marker.get("pid", -1)), 0)
    except (OSError, ValueError):
        return None
    return marker


def error_message(path: Path) -> str:
    try:
        lines = (path / ERROR_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    return lines[0] if lines else ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
