"""Executors: how a study's runs get trained. Both call ``medsum.train.run`` on the same run directories and
record the same files, so a study can start under one executor and resume under the other. The extractive
baselines (``medsum.baselines``) are written in the driver's process under either (``run_baselines``).

local: in this process, one run after the other.
ray:   one Ray task per run (``pip install 'medsum[ray]'``), asking for 1 GPU when the cluster has GPUs, else 1 CPU
       (the spec's ``ray: {num_cpus, num_gpus}`` overrides; fractions share a GPU between small runs).

A search (``medsum.study.tuning``) decides its next trial from the last one's result, so it submits runs one at a
time to a pool (``LocalPool``, ``RayPool``: ``submit`` then ``next_done``); the trials of different searches run in
parallel on Ray.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.baselines import BaselineRun
from medsum.config import RunConfig
from medsum.errors import MedsumError
from medsum.preemption import Preempted
from medsum.study.spec import PlannedRun
from medsum.train.tracking import TrackingPlace

# variables a Ray worker on another node needs to find data, caches and offline mode as the driver does
FORWARDED_ENV_PREFIXES = ("HF_", "MEDSUM_", "TRANSFORMERS_", "TOKENIZERS_")


def execute_run(cfg: RunConfig, show_progress: bool = True, place: TrackingPlace | None = None) -> str:
    """Trains one run; ``running.json`` marks it while it works and ``error.txt`` keeps why it failed.

    A failure is recorded and returned ("failed"), never raised, so one bad run does not stop a study. A stop
    signal (``Preempted``: the run checkpointed) is recorded as ``interrupted.json`` and stops the study, as does
    KeyboardInterrupt. ``place``: where the run's trackers log (the study's experiment and store).
    """
    from medsum import train

    run_dir = cfg.run_dir
    if rundir.is_finished(run_dir):
        return "done"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / rundir.ERROR).unlink(missing_ok=True)
    (run_dir / rundir.INTERRUPTED).unlink(missing_ok=True)
    marker = run_dir / rundir.RUNNING
    rundir.atomic_write_json(marker, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    try:
        train.run(cfg, show_progress=show_progress, place=place)
        return "done"
    except Preempted as stopped:
        rundir.atomic_write_json(run_dir / rundir.INTERRUPTED, {"signal": signal.Signals(stopped.signum).name,
                                                                "step": stopped.step,
                                                                "checkpoint": stopped.checkpoint})
        raise
    except Exception as err:  # any failure of one run is that run's, recorded for the report and the retry
        record_failure(run_dir, err)
        return "failed"
    finally:
        marker.unlink(missing_ok=True)


def record_failure(run_dir: Path, err: BaseException) -> None:
    message = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, MedsumError):
        message = f"{type(err).__name__}: {message}"
    details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    rundir.atomic_write_text(run_dir / rundir.ERROR, f"{message}\n\n{details}")


# ---------------------------------------------------------------------------------------------- local


def run_local(runs: list[PlannedRun], show_progress: bool = True,
              place: TrackingPlace | None = None) -> dict[str, str]:
    """Trains the runs one after the other in this process; returns run name -> done | failed."""
    statuses = {}
    started = time.perf_counter()
    for i, planned in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {planned.name}{_eta(started, i - 1, len(runs))}", flush=True)
        statuses[planned.name] = execute_run(planned.config, show_progress, place)
        if statuses[planned.name] == "failed":
            reason = rundir.error_message(planned.config.run_dir)
            print(f"[{i}/{len(runs)}] {planned.name} failed: {reason}", flush=True)
    return statuses


def _eta(started: float, done: int, total: int) -> str:
    if not done:
        return ""
    elapsed = time.perf_counter() - started
    return f" ({elapsed:.0f} s so far, about {elapsed / done * (total - done):.0f} s to go)"


# ---------------------------------------------------------------------------------------------- baselines


def run_baselines(baselines: list[BaselineRun]) -> dict[str, str]:
    """Writes the unfinished extractive baselines in this process, whatever the executor (no training: they take
    seconds to minutes); a failure is recorded in the baseline's error.txt like a run's. Returns run name ->
    done | failed."""
    from medsum.baselines import run_dir_name, write_baseline

    statuses = {}
    for baseline in baselines:
        name = run_dir_name(baseline.name)
        if rundir.is_finished(baseline.run_dir):
            continue
        (baseline.run_dir / rundir.ERROR).unlink(missing_ok=True)
        try:
            write_baseline(baseline, progress=lambda message: print(f"baseline {message}", flush=True))
            statuses[name] = "done"
        except Exception as err:  # recorded for the report and the retry, as a run's failure
            record_failure(baseline.run_dir, err)
            statuses[name] = "failed"
            print(f"baseline {baseline.name} failed: {rundir.error_message(baseline.run_dir)}", flush=True)
    return statuses


# ---------------------------------------------------------------------------------------------- ray


def import_ray():
    try:
        import ray
    except ImportError:
        raise MedsumError("--executor ray needs Ray, an optional extra: pip install 'medsum[ray]' "
                          "(from a checkout: pip install -e '.[ray]')") from None
    return ray


def task_resources(cluster: dict[str, float], requested: dict[str, float]) -> dict[str, float]:
    """What each run's task asks for: the spec's ``ray:`` settings, else 1 GPU if the cluster has any, else 1 CPU."""
    if requested:
        return {"num_cpus": float(requested.get("num_cpus", 1)), "num_gpus": float(requested.get("num_gpus", 0))}
    if cluster.get("GPU", 0) >= 1:
        return {"num_cpus": 1.0, "num_gpus": 1.0}
    return {"num_cpus": 1.0, "num_gpus": 0.0}


def _ray_task(cfg: RunConfig, cwd: str, env: dict[str, str], quiet_warnings: bool,
              place: TrackingPlace | None = None) -> str:
    """The body of one Ray task: the driver's working directory (relative data paths) and settings, then the run."""
    os.environ.update(env)
    if quiet_warnings:  # as the driver's CLI does without --debug
        warnings.filterwarnings("ignore")
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return execute_run(cfg, show_progress=False, place=place)


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected (to ``address``, else a new local instance) for the duration; disconnects what it started."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        _init_ray(ray, address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_ray(ray, runs: list[PlannedRun], show_progress: bool = True,
            resources: dict[str, float] | None = None, place: TrackingPlace | None = None) -> dict[str, str]:
    """Submits one task per run to the connected Ray cluster and waits for all of them."""
    options = task_resources(ray.cluster_resources(), resources or {})
    print(f"ray: {len(runs)} tasks, each asking for {options}", flush=True)
    task = ray.remote(_ray_task).options(**options)
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    quiet = any(f[0] == "ignore" and f[2] is Warning for f in warnings.filters)
    refs = {task.remote(planned.config, os.getcwd(), env, quiet, place): planned for planned in runs}
    return _collect(ray, refs, show_progress)


def _init_ray(ray, address: str | None) -> None:
    import logging

    # a local instance needs no dashboard; an existing cluster (or a ray:// client) keeps its own settings
    options = {"include_dashboard": False} if address is None else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise MedsumError(f"cannot start or reach {where}: {' '.join(str(err).split())[:200]}") from None


class LocalPool:
    """Runs each submitted run in this process when a result is asked for, in submission order."""

    def __init__(self, show_progress: bool = True, place: TrackingPlace | None = None):
        self.show_progress = show_progress
        self.place = place
        self.queue: list[tuple[str, RunConfig]] = []

    def submit(self, key: str, cfg: RunConfig) -> None:
        self.queue.append((key, cfg))

    def next_done(self) -> tuple[str, str]:
        """(key, done | failed) of the next run, trained now."""
        key, cfg = self.queue.pop(0)
        return key, execute_run(cfg, self.show_progress, self.place)


class RayPool:
    """One Ray task per submitted run (as ``run_ray``); ``next_done`` waits for whichever finishes first."""

    def __init__(self, ray, resources: dict[str, float] | None = None, place: TrackingPlace | None = None):
        self.ray = ray
        self.place = place
        self.task = ray.remote(_ray_task).options(**task_resources(ray.cluster_resources(), resources or {}))
        self.env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        self.quiet = any(f[0] == "ignore" and f[2] is Warning for f in warnings.filters)
        self.refs: dict[Any, tuple[str, RunConfig]] = {}

    def submit(self, key: str, cfg: RunConfig) -> None:
        self.refs[self.task.remote(cfg, os.getcwd(), self.env, self.quiet, self.place)] = (key, cfg)

    def next_done(self) -> tuple[str, str]:
        done, _ = self.ray.wait(list(self.refs), num_returns=1)
        key, cfg = self.refs.pop(done[0])
        return key, _task_status(self.ray, done[0], cfg)


def _task_status(ray, ref: Any, cfg: RunConfig) -> str:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker died (out of memory, node lost): the task never
        record_failure(cfg.run_dir, err)  # got to write error.txt itself
        (cfg.run_dir / rundir.RUNNING).unlink(missing_ok=True)
        return "failed"


def _collect(ray, refs: dict[Any, PlannedRun], show_progress: bool) -> dict[str, str]:
    from tqdm.auto import tqdm

    statuses: dict[str, str] = {}
    pending = list(refs)
    with tqdm(total=len(pending), desc="runs", unit="run", disable=not show_progress, dynamic_ncols=True) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            planned = refs[done[0]]
            statuses[planned.name] = _task_status(ray, done[0], planned.config)
            bar.set_postfix_str(f"{planned.name}: {statuses[planned.name]}")
            bar.update(1)
    return statuses
