"""Studies: the whole comparison (models x methods x seeds, plus sweeps) from one YAML, resumable.

``run_study(spec, DIR)`` validates every run before anything is written, locks DIR, trains each unfinished run
into ``DIR/runs/<run>/`` with an executor (``study.executors``), then writes ``DIR/report/`` (``medsum.report``).
With a ``search:`` block, the searches (``study.tuning``) run first and the grid's runs take their choices.
Layout of a study directory:
    study.yaml        the spec of the last ``study run`` (with its command line), for the record
    .study.lock       held (flock) while a ``study run`` works here; .study.lock.json says by whom
    runs/<run>/       one run directory each (see ``medsum.rundir``); runs/baseline__<name>/ for each extractive
                      baseline of the spec's ``baselines`` (``medsum.baselines``, written before the grid, untrained)
    runs/search/<model>/<method>/trial-N/   the search's trials (run directories too)
    search.db         the search's Optuna record (SQLite)
    report/           results.csv, summary.md, summary.tex, plots
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import yaml

from medsum import rundir
from medsum.baselines import BaselineRun, run_dir_name
from medsum.config import parse_override
from medsum.errors import MedsumError
from medsum.report.runs import load_runs, load_trials
from medsum.study import tuning
from medsum.study.spec import PlannedRun, StudySpec, baseline_config, expand, load_spec
from medsum.train.tracking import TrackingPlace

__all__ = ["run_study", "run_spec", "status_table", "study_lock", "load_spec", "expand"]

LOCK_FILE = ".study.lock"
EXECUTORS = ("local", "ray")


def run_study(spec_path: Path, output: Path, overrides: list[str], executor: str = "local",
              ray_address: str | None = None, show_progress: bool = True) -> dict[str, str]:
    """Runs every unfinished run of the study in ``spec_path`` into ``output`` and writes the report."""
    spec = load_spec(spec_path)
    command = " ".join(["medsum study run", str(spec_path), "--output", str(output), *overrides])
    record = f"# {command}\n" + Path(spec_path).read_text(encoding="utf-8")
    return run_spec(spec, output, overrides, executor, ray_address, show_progress, record)


def run_spec(spec: StudySpec, output: Path, overrides: list[str], executor: str = "local",
             ray_address: str | None = None, show_progress: bool = True, record: str | None = None) -> dict[str, str]:
    """``run_study`` for a spec already in memory (the demo's); returns run name -> done | failed."""
    from medsum.report import summary_text, write_report
    from medsum.study import executors

    if executor not in EXECUTORS:
        raise MedsumError(f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")
    output = Path(output).resolve()  # run configs record absolute paths: the same from any cwd and any Ray worker
    parsed = [parse_override(item) for item in overrides]
    runs = expand(spec, parsed, output)
    baselines = plan_baselines(spec, parsed, output)
    targets = tuning.plan_searches(spec, parsed, output)
    unchosen: list[str] = []
    # Ray is reached before anything is written: a missing extra or an unreachable cluster leaves no trace
    use_ray = executor == "ray" and (any(not _finished(run) for run in runs) or tuning.unfinished(spec, targets))
    with executors.ray_session(ray_address) if use_ray else nullcontext() as ray, study_lock(output):
        rundir.atomic_write_text(output / "study.yaml", record or yaml.safe_dump(spec.__dict__, sort_keys=False))
        if targets:
            runs, unchosen = _tuned_runs(spec, parsed, output, targets, ray)
        _prepare(output, spec, runs)
        _prepare_baselines(spec, baselines)
        pending = [run for run in runs if not _finished(run)]
        print(f"study {spec.name}: {len(runs)} runs, {len(runs) - len(pending)} already done, {len(pending)} to run "
              f"({executor} executor) -> {output}", flush=True)
        place = TrackingPlace(spec.name, output)  # one experiment per study, its store in the study directory
        statuses = executors.run_baselines(baselines)
        if ray is not None:
            statuses.update(executors.run_ray(ray, pending, show_progress, spec.ray, place))
        else:
            statuses.update(executors.run_local(pending, show_progress, place))
        report = write_report(output)
    print("\n" + summary_text(output) + f"\n\nreport: {report / 'summary.md'}", flush=True)
    _raise_if_failed(statuses, len(runs) + len(baselines), report)
    if unchosen:
        raise MedsumError(f"every trial of the search {', '.join(unchosen)} failed, so its grid runs did not run; "
                          f"reasons in {report / 'summary.md'}; the same command again starts that search over")
    names = [run.name for run in runs] + [run_dir_name(b.name) for b in baselines]
    return {name: statuses.get(name, "done") for name in names}


def _tuned_runs(spec: StudySpec, parsed: list, output: Path, targets: list, ray) -> tuple[list[PlannedRun], list]:
    """Runs the searches, then plans the grid with their choices; returns (runs, searches that chose nothing)."""
    from medsum.study import executors

    place = TrackingPlace(spec.name, output)  # a search's trials log to the study's experiment too
    pool = executors.RayPool(ray, spec.ray, place) if ray is not None else executors.LocalPool(False, place)
    chosen = tuning.run_searches(spec, targets, output, pool)
    runs = expand(spec, parsed, output, tuned=chosen)
    stale = tuning.stale_runs(runs)
    if stale:
        raise MedsumError(f"{len(stale)} finished runs were trained with other values than the search now chooses "
                          f"({', '.join(stale[:3])}{' ...' if len(stale) > 3 else ''}): move them out of "
                          f"{output / 'runs'} to train them with the chosen values")
    return runs, [t.name for t in targets if any(chosen.get(p) is None for p in t.points)]


def _finished(run: PlannedRun) -> bool:
    return rundir.is_finished(run.config.run_dir)


def _prepare(output: Path, spec: StudySpec, runs: list[PlannedRun]) -> None:
    """Creates every run directory with its study membership, clears markers of dead runs."""
    for planned in runs:
        run_dir = planned.config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_json(run_dir / rundir.MEMBERSHIP, planned.membership(spec.name))
        # we hold the lock, so no other study run can be training here: any marker is left by a dead process
        (run_dir / rundir.RUNNING).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- baselines


def plan_baselines(spec: StudySpec, overrides: list[tuple[str, Any]], output: Path) -> list[BaselineRun]:
    """The study's extractive baselines, each in ``output/runs/baseline__<name>/``, on the base data settings."""
    if not spec.baselines:
        return []
    cfg = baseline_config(spec, overrides)
    return [BaselineRun(name, output / "runs" / run_dir_name(name), cfg.data, cfg.evaluate) for name in spec.baselines]


def _prepare_baselines(spec: StudySpec, baselines: list[BaselineRun]) -> None:
    """Creates each baseline's run directory with its study membership (``study status`` lists it as pending)."""
    for baseline in baselines:
        baseline.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_json(baseline.run_dir / rundir.MEMBERSHIP,
                                 {"study": spec.name, "grid": True, "sweeps": {}, "baseline": baseline.name})


def _raise_if_failed(statuses: dict[str, str], total: int, report: Path) -> None:
    failed = [name for name, status in statuses.items() if status == "failed"]
    if failed:
        shown = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise MedsumError(f"{len(failed)} of {total} runs failed ({shown}); reasons in runs/<run>/error.txt and "
                          f"{report / 'summary.md'}; the same command again retries them")


# ---------------------------------------------------------------------------------------------- lock


@contextmanager
def study_lock(output: Path) -> Iterator[None]:
    """Holds ``output/.study.lock`` (flock: released by the kernel even if this process is killed)."""
    output.mkdir(parents=True, exist_ok=True)
    handle = open(output / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise MedsumError(f"study directory {output} is locked: another `medsum study run` is working in it "
                          f"({lock_holder(output)}); wait for it to finish or stop it") from None
    try:
        rundir.atomic_write_json(output / f"{LOCK_FILE}.json", {"pid": os.getpid(), "host": socket.gethostname()})
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def lock_holder(output: Path) -> str:
    try:
        holder = json.loads((output / f"{LOCK_FILE}.json").read_text())
        return f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def is_locked(output: Path) -> bool:
    path = output / LOCK_FILE
    if not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# ---------------------------------------------------------------------------------------------- status


def status_table(output: Path) -> str:
    """The runs of a study as done / running / failed / pending, one line each."""
    output = Path(output)
    records = load_runs(output)
    counts = {s: sum(r.status == s for r in records) for s in rundir.STATUSES}
    lines = [f"{output}: {len(records)} runs, " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    if is_locked(output):
        lines.append(f"a study run is working here ({lock_holder(output)})")
    width = max([len(r.name) for r in records] + [3])
    lines.append(f"{'run':<{width}}  {'status':<8}  {'ROUGE-1':>7}  detail")
    for record in records:
        rouge1 = record.metrics.get("test", {}).get("rouge1")
        detail = record.error if record.status in ("failed", "interrupted") else ""
        if record.status == "running":
            marker = rundir.running_process(record.path) or {}
            detail = f"pid {marker.get('pid')} on {marker.get('host')}"
        score = f"{rouge1:7.2f}" if isinstance(rouge1, (int, float)) else " " * 7
        lines.append(f"{record.name:<{width}}  {record.status:<8}  {score}  {detail}".rstrip())
    return "\n".join(lines + _trial_lines(output))


def _trial_lines(output: Path) -> list[str]:
    """The search's trials: status, searched values and validation score, one line each."""
    trials = load_trials(output)
    if not trials:
        return []
    counts = ", ".join(f"{sum(t.status == s for t in trials)} {s}" for s in rundir.STATUSES)
    lines = ["", f"search: {len(trials)} trials, {counts} (record: {tuning.STORAGE})"]
    width = max(len(t.name) for t in trials)
    lines.append(f"{'trial':<{width}}  {'status':<8}  {'val R-1':>7}  searched values")
    for trial in trials:
        search = trial.membership.get("search", {})
        score = trial.metrics.get("validation", {}).get(search.get("metric", "rouge1"))
        shown = f"{score:7.2f}" if isinstance(score, (int, float)) else " " * 7
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in search.get("params", {}).items())
        detail = f"  {trial.error}" if trial.status == "failed" else ""
        lines.append(f"{trial.name:<{width}}  {trial.status:<8}  {shown}  {values}{detail}")
    return lines
