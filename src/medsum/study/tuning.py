"""The search itself: one Optuna study (TPE, seeded) per grid variant, its trials ordinary run directories.

``plan_searches`` names the searches of a study (``medsum.study.search``); ``run_searches`` runs every search's
unfinished trials and returns each grid point's choice, which ``spec.expand`` applies to the grid's runs.

- The Optuna record is ``DIR/search.db`` (SQLite), one Optuna study per search, named ``<model>/<method>[__...]``;
  trial N is the run directory ``DIR/runs/search/<model>/<method>[__...]/trial-N/``, trained with the run seed
  ``search.seed`` and scored by its validation ``search.metric`` (metrics.json's ``validation``).
- Resume: a trial left RUNNING in the record by a killed process is finished with its recorded values (its run
  directory, when finished, is read back, never trained again); the budget counts complete and failed trials.
- The sampler is seeded per trial from ``search.seed`` and the trial's number, so a resumed search suggests what an
  uninterrupted one would have, and the same seed gives the same suggestions.
- A failed trial (its run failed: ``error.txt``) is told FAIL and the search goes on; a search whose trials all
  failed chooses nothing, and the next ``study run`` starts it over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.config import config_from_dict
from medsum.errors import MedsumError
from medsum.methods import DEFAULT_METHOD
from medsum.settings import flatten
from medsum.study.search import SearchSpec, SearchTarget, check_corners, point_key, target_folder
from medsum.study.spec import PlannedRun, StudySpec, dedup_key, run_name, run_tree, study_points

STORAGE = "search.db"
MAX_STARTUP_TRIALS = 10  # TPE's own default number of random trials before it models the results


# ---------------------------------------------------------------------------------------------- planning


def plan_searches(spec: StudySpec, overrides: list[tuple[str, Any]], output: Path) -> list[SearchTarget]:
    """One search per grid variant whose method has something to search; grid points whose runs are the same
    config share one. Every bound and choice of every space is checked against the config first."""
    if spec.search is None:
        return []
    targets: dict[str, SearchTarget] = {}
    for point, naming_keys, sweep in study_points(spec):
        if sweep is not None:
            continue
        tree, _ = run_tree(spec, point, spec.search.seed, overrides)
        method = (tree.get("method") or {}).get("name", DEFAULT_METHOD)
        space = spec.search.space_of(method)
        if not space:
            continue
        cfg = config_from_dict(tree, "run")
        key = dedup_key(cfg)
        if key not in targets:
            name, folder = target_folder(output, run_name(cfg, naming_keys), cfg.seed)
            if any(t.name == name for t in targets.values()):
                name += "__" + hashlib.sha256(key.encode()).hexdigest()[:6]
                folder = folder.with_name(folder.name + name[-8:])
            targets[key] = SearchTarget(name, folder, tree, space, method)
        targets[key].points.append(point_key(list(spec.grid), point))
    errors: dict[str, str] = {}
    for target in targets.values():
        check_corners(target, errors)
    if errors:
        raise MedsumError("; ".join(errors))
    return list(targets.values())


def unfinished(spec: StudySpec, targets: list[SearchTarget]) -> bool:
    """Whether a search still has trials to run, judged from the trial run directories (no database opened)."""
    for target in targets:
        trials = list(target.folder.glob("trial-*")) if target.folder.is_dir() else []
        ended = [t for t in trials if rundir.status(t) in ("done", "failed")]
        if len(ended) < spec.search.trials or not any(rundir.is_finished(t) for t in trials):
            return True
    return False


# ---------------------------------------------------------------------------------------------- one search


@dataclass
class Trial:
    search: MethodSearch
    number: int
    params: dict[str, Any]
    cfg: Any  # RunConfig


class MethodSearch:
    """The Optuna study of one search target and the trials it still owes."""

    def __init__(self, target: SearchTarget, search: SearchSpec, storage: Any, owner: str):
        import optuna

        self.target, self.search, self.owner = target, search, owner  # owner: the medsum study's name
        self.study = optuna.create_study(study_name=target.name, storage=storage, direction="maximize",
                                         load_if_exists=True)
        self.study.set_user_attr("method", target.method)
        if not self._states("COMPLETE") and self._states("FAIL") and not self._states("RUNNING"):
            self._start_over(storage)  # every trial failed: the next study run tries again
        self.left_running = [t.number for t in self._states("RUNNING")]  # by a process that was killed

    def _states(self, *names: str) -> list:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=tuple(TrialState[n] for n in names))

    def _start_over(self, storage: Any) -> None:
        import optuna

        print(f"search {self.target.name}: every trial failed before; starting it over", flush=True)
        optuna.delete_study(study_name=self.target.name, storage=storage)
        for folder in self.target.folder.glob("trial-*"):
            rundir.clear_outputs(folder)
        self.study = optuna.create_study(study_name=self.target.name, storage=storage, direction="maximize")
        self.study.set_user_attr("method", self.target.method)

    def next_trial(self) -> Trial | None:
        """A trial left running by a killed process first, else a new one while the budget lasts, else None."""
        if self.left_running:
            number = self.left_running.pop(0)
            return self._trial(number, self.study.get_trials(deepcopy=False)[number].params)
        if len(self.study.get_trials(deepcopy=False)) >= self.search.trials:
            return None
        number = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = trial_sampler(self.search.seed, number, self.search.trials)
        asked = self.study.ask({key: d.distribution() for key, d in self.target.space.items()})
        asked.set_user_attr("method", self.target.method)
        asked.set_user_attr("run_dir", str(self.target.folder / f"trial-{asked.number}"))
        return self._trial(asked.number, asked.params)

    def _trial(self, number: int, params: dict[str, Any]) -> Trial:
        cfg = self.target.trial_config(number, params)
        _check_trial_dir(cfg.run_dir, params)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write_json(cfg.run_dir / rundir.MEMBERSHIP, self._membership(number, params))
        (cfg.run_dir / rundir.RUNNING).unlink(missing_ok=True)  # we hold the study lock: left by a dead process
        return Trial(self, number, params, cfg)

    def _membership(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        dims = {key: {"kind": d.kind, "values": list(d.values)} for key, d in self.target.space.items()}
        return {"study": self.owner, "grid": False, "sweeps": {},
                "search": {"name": self.target.name, "method": self.target.method, "trial": number,
                           "params": params, "space": dims, **self.search.as_record()}}

    def finish(self, trial: Trial, status: str) -> float | None:
        """Tells Optuna the trial's validation score (or that it failed); returns the score."""
        from optuna.trial import TrialState

        metrics = rundir.read_json(trial.cfg.run_dir / rundir.METRICS) if status == "done" else {}
        value = (metrics.get("validation") or {}).get(self.search.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.study.tell(trial.number, float(value))
            return float(value)
        self.study.tell(trial.number, state=TrialState.FAIL)
        return None

    def choice(self) -> dict[str, Any] | None:
        """The complete trial with the best score (the first of tied ones), or None when no trial completed."""
        complete = sorted(self._states("COMPLETE"), key=lambda t: t.number)
        if not complete:
            return None
        best = max(complete, key=lambda t: t.value)  # max keeps the first of equal values
        return {"search": self.target.name, "trial": best.number, "params": dict(best.params),
                "value": best.value, "metric": self.search.metric}


def trial_sampler(seed: int, number: int, trials: int):
    """TPE seeded from the search's seed and the trial's number; half the budget (at most 10) random first."""
    from optuna.samplers import TPESampler

    derived = int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")
    return TPESampler(seed=derived, n_startup_trials=max(1, min(MAX_STARTUP_TRIALS, trials // 2)))


def _check_trial_dir(run_dir: Path, params: dict[str, Any]) -> None:
    """A trial's run directory must hold that trial: a folder with other values is not the record's (search.db
    lost or replaced), and training over it would mix two trials."""
    config = flatten(rundir.read_config(run_dir))
    if config and any(config.get(key) != value for key, value in params.items()):
        raise MedsumError(f"{run_dir} holds a trial with other values than the search record {STORAGE} says "
                          f"({', '.join(f'{k}={config.get(k)}' for k in params)}); restore {STORAGE} or move "
                          f"{run_dir.parent} away")


# ---------------------------------------------------------------------------------------------- all searches


def run_searches(spec: StudySpec, targets: list[SearchTarget], output: Path, pool: Any) -> dict[str, dict | None]:
    """Runs every search's unfinished trials, each search one trial at a time, different searches side by side
    when the pool runs several at once (Ray); returns each grid point's choice (None: its search chose nothing)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(output) / STORAGE}")
    searches = [MethodSearch(target, spec.search, storage, spec.name) for target in targets]
    in_flight: dict[str, Trial] = {}
    while True:
        for search in searches:
            if search.target.name not in in_flight and (trial := search.next_trial()) is not None:
                print(f"search {search.target.name}: trial {trial.number} ({_show(trial.params)})", flush=True)
                pool.submit(search.target.name, trial.cfg)
                in_flight[search.target.name] = trial
        if not in_flight:
            break
        name, status = pool.next_done()
        trial = in_flight.pop(name)
        score = trial.search.finish(trial, status)
        outcome = f"validation {spec.search.metric} {score:.2f}" if score is not None else \
            f"failed: {rundir.error_message(trial.cfg.run_dir) or 'no validation score'}"
        print(f"search {name}: trial {trial.number} {outcome}", flush=True)
    return _choices(searches)


def _choices(searches: list[MethodSearch]) -> dict[str, dict | None]:
    chosen: dict[str, dict | None] = {}
    for search in searches:
        choice = search.choice()
        print(f"search {search.target.name}: " + (f"chose trial {choice['trial']} ({_show(choice['params'])}), "
                                                  f"validation {choice['metric']} {choice['value']:.2f}"
                                                  if choice else "no trial completed"), flush=True)
        chosen.update(dict.fromkeys(search.target.points, choice))
    return chosen


def _show(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def stale_runs(runs: list[PlannedRun]) -> list[str]:
    """Finished grid runs trained with other values than the search now chooses (e.g. a search given more trials
    since): named, so that the user decides; they are never silently retrained or kept."""
    stale = []
    for planned in runs:
        if planned.tuned and rundir.is_finished(planned.config.run_dir):
            config = flatten(rundir.read_config(planned.config.run_dir))
            if any(config.get(key) != value for key, value in planned.tuned["params"].items()):
                stale.append(planned.name)
    return stale
