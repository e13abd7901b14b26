"""Reading a study's run directories (their layout and statuses: ``medsum.rundir``): the only input of the report
and of ``medsum study status``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.errors import MedsumError
from medsum.settings import flatten

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
    def baseline(self) -> str | None:
        """The extractive baseline this run directory holds (``medsum.baselines``), None for a trained run."""
        about = self.metrics.get("baseline")
        name = about.get("name") if isinstance(about, dict) else None
        return name or self.membership.get("baseline") or self.config.get("baseline")

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
        return {str(row["id"]): row for row in rundir.read_jsonl(self.path / rundir.PREDICTIONS)}


def load_runs(output: Path) -> list[RunRecord]:
    """Every run directory under ``output/runs/``, sorted by name; a study directory without one is an error."""
    runs_dir = Path(output) / "runs"
    if not runs_dir.is_dir():
        raise MedsumError(f"{output} holds no study (no runs/ folder); start one with medsum study run")
    return [read_run(path) for path in sorted(runs_dir.iterdir())
            if path.is_dir() and not path.name.startswith(".") and path.name != rundir.SEARCH]


def load_trials(output: Path) -> list[RunRecord]:
    """The search's trials (``runs/search/<model>/<method>/trial-N/``), by search, then trial number; each
    record's name is ``<model>/<method>/trial-N``."""
    root = Path(output) / "runs" / rundir.SEARCH
    found = [read_run(path) for path in root.glob("*/*/trial-*") if path.is_dir()] if root.is_dir() else []
    for record in found:
        record.name = record.path.relative_to(root).as_posix()
    return sorted(found, key=lambda r: (str(r.membership.get("search", {}).get("name", r.path.parent)),
                                        r.membership.get("search", {}).get("trial", 0)))


def read_run(path: Path) -> RunRecord:
    status = rundir.status(path)
    record = RunRecord(path.name, path, status, membership=rundir.read_json(path / rundir.MEMBERSHIP))
    record.config = flatten(rundir.read_config(path))
    if status == "done":
        record.metrics = rundir.read_json(path / rundir.METRICS)
    elif status == "failed":
        record.error = rundir.error_message(path)
    elif status == "interrupted":
        stop = rundir.read_json(path / rundir.INTERRUPTED)
        record.error = f"{stop.get('signal')} after step {stop.get('step')}; the next study run resumes it"
    return record
