"""The ``search:`` block of a study: every method tuned with the same budget before the methods are compared.

```yaml
search:
  trials: 8                 # per method: every method gets the same budget
  metric: rouge1            # on the validation split, never the test split
  seed: 1                   # the run seed of the trials (default: the study's first seed)
  space:                    # dotted config key -> one distribution
    train.learning_rate: {log_uniform: [1.0e-5, 1.0e-2]}
  methods:                  # per-method entries replace the space's entry of the same key
    full: {train.learning_rate: {log_uniform: [1.0e-6, 1.0e-4]}}
```

Distributions: ``log_uniform: [low, high]`` (0 < low < high), ``uniform: [low, high]`` (low < high),
``int: [low, high]`` (integers, low < high) and ``choice: [values...]``. This module reads and checks the block
(every problem named by its key) and plans the searches: one per variant of the grid (model, method and the other
grid keys, without the seed). ``medsum.study.tuning`` runs them with Optuna.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.config import all_keys, config_from_dict, set_dotted, unknown_key_message
from medsum.errors import MedsumError
from medsum.evaluate import ROUGE_KEYS
from medsum.methods import METHODS

SEARCH_KEYS = ("trials", "metric", "seed", "space", "methods", "compare_defaults")
DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")
NOT_SEARCHABLE = {"model.name": "the study compares models; give them in the grid",
                  "method.name": "the study compares methods; search their settings instead",
                  "name": "set by the study", "output_dir": "set by the study",
                  "seed": "the trials' run seed is search.seed"}
# a trial must have a validation score even when it validates only once, at its last step
TRIAL_SETTINGS = {"train.validate_lone_candidate": True}


@dataclass(frozen=True)
class Dimension:
    """One searched key: its distribution and that distribution's bounds or choices."""

    key: str
    kind: str
    values: tuple
    where: str = ""  # search.space.<key> or search.methods.<method>.<key>: what errors name

    def distribution(self):
        """The Optuna distribution of this dimension (optuna is imported only when a search runs)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return IntDistribution(int(self.values[0]), int(self.values[1]))
        return FloatDistribution(float(self.values[0]), float(self.values[1]), log=self.kind == "log_uniform")

    def corners(self) -> list[Any]:
        """The values that validate the dimension against the config: both bounds and, for the continuous
        distributions, a value between them that is not a whole number (what they draw: floats), or every choice."""
        low, high = (float(v) for v in self.values[:2]) if self.kind != "choice" else (0.0, 0.0)
        if self.kind == "uniform":
            return [low, low + (high - low) * 0.37, high]
        if self.kind == "log_uniform":
            return [low, low * (high / low) ** 0.37, high]
        return list(self.values)

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


@dataclass
class SearchSpec:
    trials: int
    metric: str
    seed: int
    space: dict[str, Dimension]
    methods: dict[str, dict[str, Dimension]] = field(default_factory=dict)
    compare_defaults: bool = False  # the grid also runs every seed with the untuned settings

    def space_of(self, method: str) -> dict[str, Dimension]:
        """The method's space: the shared one (``method.*`` keys only for methods that have them), its own on top."""
        own = _method_fields(method)
        shared = {key: dim for key, dim in self.space.items()
                  if not key.startswith("method.") or key.removeprefix("method.") in own}
        return {**shared, **self.methods.get(method, {})}

    def keys(self) -> set[str]:
        """Every searched key, of the shared space and of the methods' own."""
        return set(self.space).union(*(space.keys() for space in self.methods.values()))

    def as_record(self) -> dict[str, Any]:
        """What the trials' study.json records of the search."""
        return {"trials": self.trials, "metric": self.metric, "seed": self.seed}


# ---------------------------------------------------------------------------------------------- reading


def parse_search(value: Any, default_seed: int, errors: list[str]) -> SearchSpec | None:
    """The ``search:`` block, or None without one; every problem is appended to ``errors`` naming its key."""
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.append(f"search: expected a mapping (trials, metric, seed, space, methods), got {value!r}")
        return None
    errors += [f"search.{key}: unknown (search keys: {', '.join(SEARCH_KEYS)})" for key in value
               if key not in SEARCH_KEYS]
    space = _space(value.get("space"), "search.space", None, errors)
    methods = _method_spaces(value.get("methods"), errors)
    if not value.get("space") and not any((value.get("methods") or {}).values()):
        errors.append("search.space: give at least one key to search (e.g. train.learning_rate: "
                      "{log_uniform: [1.0e-5, 1.0e-2]})")
    return SearchSpec(trials=_trials(value.get("trials"), errors),
                      metric=_metric(value.get("metric", "rouge1"), errors),
                      seed=_seed(value.get("seed", default_seed), errors), space=space, methods=methods,
                      compare_defaults=_flag(value.get("compare_defaults", False), errors))


def _trials(value: Any, errors: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        errors.append(f"search.trials: expected the number of trials per method, an integer >= 1, got {value!r}")
        return 1
    return value


def _metric(value: Any, errors: list[str]) -> str:
    if value in ROUGE_KEYS:
        return value
    if isinstance(value, str) and "test" in value.lower():
        errors.append(f"search.metric: {value!r}: the search selects on the validation split only, never on the test "
                      f"split; give a validation metric ({', '.join(ROUGE_KEYS)})")
    else:
        errors.append(f"search.metric: expected a validation metric ({', '.join(ROUGE_KEYS)}), got {value!r}")
    return "rouge1"


def _seed(value: Any, errors: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 32:
        errors.append(f"search.seed: expected an integer in [0, 2**32) (the trials' run seed), got {value!r}")
        return 0
    return value


def _flag(value: Any, errors: list[str]) -> bool:
    if not isinstance(value, bool):
        errors.append(f"search.compare_defaults: expected true or false, got {value!r}")
        return False
    return value


def _method_spaces(value: Any, errors: list[str]) -> dict[str, dict[str, Dimension]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"search.methods: expected a mapping of method name -> space, got {value!r}")
        return {}
    spaces = {}
    for method, space in value.items():
        if method not in METHODS:
            errors.append(f"search.methods: unknown method {method!r} (known: {', '.join(METHODS)})")
            continue
        spaces[method] = _space(space, f"search.methods.{method}", method, errors)
    return spaces


def _space(value: Any, where: str, method: str | None, errors: list[str]) -> dict[str, Dimension]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping of config key -> distribution, got {value!r}")
        return {}
    space = {}
    for key, entry in value.items():
        problem = _key_problem(str(key), method)
        dimension = None if problem else _dimension(str(key), entry, f"{where}.{key}", errors)
        if problem:
            errors.append(f"{where}.{key}: {problem}")
        elif dimension is not None:
            space[str(key)] = dimension
    return space


def _key_problem(key: str, method: str | None) -> str | None:
    """Why ``key`` cannot be searched (not a config key, owned by the study, or not a setting of ``method``)."""
    if key in NOT_SEARCHABLE:
        return f"cannot be searched ({NOT_SEARCHABLE[key]})"
    if key not in all_keys():
        return unknown_key_message(key)
    if method is not None and key.startswith("method.") and key.removeprefix("method.") not in _method_fields(method):
        return f"{key} is not a setting of method {method} (its settings: " \
               f"{', '.join(sorted(_method_fields(method) - {'name'})) or 'none'})"
    return None


def _method_fields(method: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHODS[method].config_class)} if method in METHODS else set()


def _dimension(key: str, entry: Any, where: str, errors: list[str]) -> Dimension | None:
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
        errors.append(f"{where}: expected one distribution, {{{' | '.join(DISTRIBUTIONS)}: ...}} "
                      f"(e.g. {{log_uniform: [1.0e-5, 1.0e-2]}}), got {entry!r}")
        return None
    kind, values = next(iter(entry.items()))
    problem = _CHECKS[kind](values)
    if problem:
        errors.append(f"{where}: {kind} {problem}, got {values!r}")
        return None
    return Dimension(key, kind, tuple(values), where)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair(values: Any) -> bool:
    return isinstance(values, list) and len(values) == 2 and all(_is_number(v) for v in values)


def _log_uniform_problem(values: Any) -> str | None:
    if _pair(values) and 0 < values[0] < values[1]:
        return None
    return "needs [low, high] with 0 < low < high"


def _uniform_problem(values: Any) -> str | None:
    return None if _pair(values) and values[0] < values[1] else "needs [low, high] with low < high"


def _int_problem(values: Any) -> str | None:
    if _pair(values) and all(isinstance(v, int) for v in values) and values[0] < values[1]:
        return None
    return "needs [low, high], integers with low < high"


def _choice_problem(values: Any) -> str | None:
    plain = (str, int, float, bool, type(None))
    if not isinstance(values, list) or not values or not all(isinstance(v, plain) for v in values):
        return "needs a non-empty list of plain values (numbers, strings, true/false, null)"
    if len({json.dumps(v) for v in values}) != len(values):
        return "needs distinct values"
    return None


_CHECKS = {"log_uniform": _log_uniform_problem, "uniform": _uniform_problem, "int": _int_problem,
           "choice": _choice_problem}


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class SearchTarget:
    """One search: a variant of the grid (its config tree without the searched values) and its space."""

    name: str  # <model>/<method>[__<other grid values>]: the Optuna study's name
    folder: Path  # DIR/runs/search/<model>/<method>[__...]/, one trial-N/ run directory per trial
    tree: dict  # the run config tree of the trials, seed = search.seed, before the searched values
    space: dict[str, Dimension]
    method: str
    points: list[str] = field(default_factory=list)  # the grid points (point_key) this search tunes

    def trial_config(self, number: int, params: dict[str, Any]):
        """The validated RunConfig of trial ``number`` with the searched ``params``."""
        import copy

        tree = copy.deepcopy(self.tree)
        for key, value in {**params, **TRIAL_SETTINGS}.items():
            set_dotted(tree, key, value)
        tree["name"] = f"trial-{number}"
        tree["output_dir"] = str(self.folder / f"trial-{number}")
        return config_from_dict(tree, f"search {self.name} trial {number}")


def point_key(grid_keys: list[str], point: dict[str, Any]) -> str:
    """Identifies a grid point (the values of the grid keys) so that a run can find the search that tuned it."""
    return json.dumps({key: point.get(key) for key in grid_keys}, sort_keys=True, default=str)


def target_folder(output: Path, run_name: str, seed: int) -> tuple[str, Path]:
    """(Optuna study name, trial folder) of a search from a run name ``<model>__<method>[__...]__s<seed>``."""
    stem = run_name.removesuffix(f"__s{seed}")
    model, _, variant = stem.partition("__")
    return f"{model}/{variant}", Path(output) / "runs" / rundir.SEARCH / model / variant


def check_corners(target: SearchTarget, errors: dict[str, str]) -> None:
    """Builds a trial config at every bound and choice of the space, so that a value the config refuses (a float
    for an integer setting, a rate out of its bound) is reported before anything runs, naming the searched key."""
    for key, dimension in target.space.items():
        for value in dimension.corners():
            try:
                target.trial_config(0, {key: value})
            except MedsumError as err:
                message = str(err).split(": ", 1)[-1]
                errors.setdefault(f"{dimension.where}: value {value!r} gives an invalid run config ({message})",
                                  target.name)
