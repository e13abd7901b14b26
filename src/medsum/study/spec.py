"""Study specs: read a study YAML, validate all of it, and expand it into the runs it names.

A spec is ``name``, ``base`` (a run config tree), ``grid`` (dotted key -> values; the cartesian product),
``seeds``, ``methods`` (method name -> overrides applied to that method's runs), ``sweeps`` (name -> keys, exactly
one of them a list: a one-factor sensitivity analysis around the grid's first point), ``ray`` (resources of
each run's Ray task) and ``search`` (``medsum.study.search``: each grid variant tuned before the grid runs).
Layers, later ones winning: base < methods[method] < the search's chosen values < grid point or sweep point <
command-line overrides. A ``method.*`` key belongs to the methods that have it: it is dropped for the others, so
``grid: {method.name: [lora, full], method.r: [8, 16]}`` gives full fine-tuning once per seed, not twice.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsum.config import RunConfig, all_keys, config_from_dict, names_of, set_dotted, unknown_key_message
from medsum.errors import MedsumError
from medsum.methods import DEFAULT_METHOD, METHODS
from medsum.settings import flatten, read_yaml
from medsum.study.search import SearchSpec, parse_search, point_key

SPEC_KEYS = ("name", "description", "base", "grid", "seeds", "methods", "sweeps", "ray", "search")
STUDY_OWNED_KEYS = ("name", "output_dir", "seed")  # the study names runs, places them and takes seeds from `seeds`
RAY_KEYS = ("num_cpus", "num_gpus")


@dataclass
class StudySpec:
    name: str
    base: dict
    grid: dict[str, list]
    seeds: list[int]
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    ray: dict[str, float] = field(default_factory=dict)
    search: SearchSpec | None = None


@dataclass
class PlannedRun:
    """One run of a study: its name, its validated config, and which parts of the study it belongs to."""

    name: str
    config: RunConfig
    grid: bool = False
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)  # sweep name -> {"key", "value"}
    tuned: dict[str, Any] | None = None  # the search's choice it runs with: {"search", "trial", "params", "value"}
    defaults: bool = False  # a run of the grid with the untuned settings (search.compare_defaults)

    def membership(self, study: str) -> dict[str, Any]:
        extra = {"tuned": self.tuned} if self.tuned else {}
        return {"study": study, "grid": self.grid, "sweeps": self.sweeps, **extra,
                **({"defaults": True} if self.defaults else {})}


# ---------------------------------------------------------------------------------------------- reading


def load_spec(path: Path) -> StudySpec:
    return spec_from_dict(read_yaml(path), str(path), default_name=Path(path).stem)


def spec_from_dict(data: dict, source: str, default_name: str = "study") -> StudySpec:
    """Checks the spec's shape and every key it names; all problems are reported in one MedsumError."""
    errors: list[str] = []
    errors += [f"unknown study key {key!r} (study keys: {', '.join(SPEC_KEYS)})" for key in data
               if key not in SPEC_KEYS]
    base = _mapping(data.get("base"), "base", errors)
    grid = {key: _as_list(values, f"grid.{key}", errors) for key, values in _mapping(data.get("grid"), "grid",
                                                                                    errors).items()}
    methods = {name: _mapping(over, f"methods.{name}", errors)
               for name, over in _mapping(data.get("methods"), "methods", errors).items()}
    sweeps = {name: _mapping(keys, f"sweeps.{name}", errors)
              for name, keys in _mapping(data.get("sweeps"), "sweeps", errors).items()}
    seeds = _seeds(data.get("seeds", [1]), errors)
    spec = StudySpec(name=str(data.get("name") or default_name), base=_nested(base), grid=grid, seeds=seeds,
                     methods=methods, sweeps=sweeps, ray=_ray(data.get("ray"), errors),
                     search=parse_search(data.get("search"), seeds[0] if seeds else 1, errors))
    errors += _key_errors(spec) + _search_conflicts(spec)
    if errors:
        raise MedsumError(f"{source}: " + "; ".join(errors))
    return spec


def _mapping(value: Any, where: str, errors: list[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping, got {value!r}")
        return {}
    return value


def _as_list(values: Any, where: str, errors: list[str]) -> list:
    values = values if isinstance(values, list) else [values]
    if not values:
        errors.append(f"{where}: empty list (give at least one value)")
    return values


def _nested(tree: dict) -> dict:
    """``base`` may mix nested sections and dotted keys; both become one nested tree."""
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                set_dotted(out, f"{key}.{sub_key}", copy.deepcopy(sub_value))
        else:
            set_dotted(out, key, copy.deepcopy(value))
    return out


def _seeds(value: Any, errors: list[str]) -> list[int]:
    seeds = value if isinstance(value, list) else [value]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        errors.append(f"seeds: expected a list of integers, got {value!r}")
        return []
    if len(set(seeds)) != len(seeds):
        errors.append(f"seeds: repeated seed in {seeds}")
    return seeds


def _ray(value: Any, errors: list[str]) -> dict[str, float]:
    ray = _mapping(value, "ray", errors)
    for key, amount in ray.items():
        if key not in RAY_KEYS:
            errors.append(f"ray.{key}: unknown (ray keys: {', '.join(RAY_KEYS)})")
        elif isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            errors.append(f"ray.{key}: expected a number >= 0, got {amount!r}")
    return ray


def _key_errors(spec: StudySpec) -> list[str]:
    """Unknown dotted keys, named with where they appear, before any run is built (and before anything runs)."""
    errors = []
    base_keys = [key for key, value in flatten(spec.base).items() if value != {}]
    places = [("base", dict.fromkeys(base_keys)), ("grid", spec.grid),
              *((f"methods.{m}", over) for m, over in spec.methods.items()),
              *((f"sweeps.{s}", keys) for s, keys in spec.sweeps.items())]
    for where, keys in places:
        errors += [f"{where}: {message}" for message in key_problems(list(keys))]
    errors += [f"methods: unknown method {name!r} (known: {', '.join(METHODS)})" for name in spec.methods
               if name not in METHODS]
    for name, keys in spec.sweeps.items():
        varying = [key for key, value in keys.items() if isinstance(value, list)]
        if len(varying) != 1:
            errors.append(f"sweeps.{name}: exactly one key must be a list of values (the factor the sweep varies), "
                          f"got {len(varying)}" + (f" ({', '.join(varying)})" if varying else ""))
        elif not keys[varying[0]]:
            errors.append(f"sweeps.{name}.{varying[0]}: empty list")
    return errors


def _search_conflicts(spec: StudySpec) -> list[str]:
    """A searched key takes its value from the search: the grid must not set it too."""
    if spec.search is None:
        return []
    dimensions = [*spec.search.space.values(), *(d for space in spec.search.methods.values() for d in space.values())]
    return [f"{d.where}: also a grid key; a searched key takes its value from the search" for d in dimensions
            if d.key in spec.grid]


def key_problems(keys: list[str]) -> list[str]:
    """What is wrong with keys a study sets per run: unknown keys (nearest suggested) and keys the study owns."""
    valid = set(all_keys())
    problems = []
    for key in keys:
        if key in STUDY_OWNED_KEYS:
            problems.append(f"{key} is set by the study (runs are named <model>__<method>__s<seed> under "
                            f"OUTPUT/runs/; seeds come from `seeds:`)")
        elif key not in valid:
            problems.append(unknown_key_message(key))
    return problems


# ---------------------------------------------------------------------------------------------- expansion


def expand(spec: StudySpec, overrides: list[tuple[str, Any]], output: Path,
           tuned: dict[str, dict | None] | None = None) -> list[PlannedRun]:
    """Every run of the study, validated and deduplicated, named and placed under ``output/runs/``.

    ``tuned``: the searches' choices by grid point (``search.point_key``); a point whose search chose nothing
    (every trial failed) has no runs. Without it (before the search) runs take the untuned settings.
    """
    _check_overrides(spec, overrides)
    runs: dict[str, PlannedRun] = {}
    naming: dict[str, tuple[list[str], RunConfig, str]] = {}
    errors: dict[str, str] = {}  # message -> the first run it was found in (every seed repeats it)
    used_keys: set[str] = set()
    for point, naming_keys, sweep in study_points(spec):
        searched = sweep != DEFAULTS and tuned is not None and point_key(list(spec.grid), point) in tuned
        choice = tuned[point_key(list(spec.grid), point)] if searched else None
        if searched and choice is None:
            continue
        for seed in spec.seeds:
            tree, applied = run_tree(spec, point, seed, overrides, choice["params"] if choice else {})
            used_keys |= applied
            try:
                cfg = config_from_dict(tree, "run")
            except MedsumError as err:
                errors.setdefault(str(err).removeprefix("run: "), _describe_point(point, seed))
                continue
            key = dedup_key(cfg)
            planned = runs.setdefault(key, PlannedRun("", cfg))
            naming.setdefault(key, (naming_keys, cfg, "default" if sweep == DEFAULTS else ""))
            _add_membership(planned, point, sweep, choice)
    problems = [f"{where}: {message}" for message, where in errors.items()]
    problems += _unused_key_errors(spec, used_keys) if not problems else []
    if problems:
        raise MedsumError("; ".join(problems))
    _name_runs(runs, naming, output)
    return list(runs.values())


DEFAULTS = ("", "")  # the "sweep" of the grid's points with their untuned settings (search.compare_defaults)


def _check_overrides(spec: StudySpec, overrides: list[tuple[str, Any]]) -> None:
    problems = key_problems([key for key, _ in overrides])
    if problems:
        raise MedsumError("command-line overrides: " + "; ".join(problems))
    searched = spec.search.keys() & {key for key, _ in overrides} if spec.search is not None else set()
    if searched:
        raise MedsumError(f"command-line overrides: {', '.join(sorted(searched))}: a searched key takes its value "
                          f"from the search")


def _add_membership(planned: PlannedRun, point: dict, sweep: tuple | None, choice: dict | None) -> None:
    """Records which parts of the study the run belongs to (a deduplicated run may belong to several)."""
    if choice:
        planned.tuned = choice
    if sweep is None:
        planned.grid = True
    elif sweep == DEFAULTS:
        planned.defaults = True
    else:
        planned.sweeps[sweep[0]] = {"key": sweep[1], "value": _plain(point[sweep[1]])}


def study_points(spec: StudySpec):
    """(dotted assignment, keys that name the run, (sweep name, varied key) or None) for the grid, then the grid
    with its untuned settings when the search compares them (``DEFAULTS``), then sweeps."""
    grid_keys = list(spec.grid)
    named_grid = [key for key in grid_keys if len(spec.grid[key]) > 1]
    for values in itertools.product(*spec.grid.values()):
        yield dict(zip(grid_keys, values)), named_grid, None
    if spec.search is not None and spec.search.compare_defaults:
        for values in itertools.product(*spec.grid.values()):
            yield dict(zip(grid_keys, values)), named_grid, DEFAULTS
    first = {key: values[0] for key, values in spec.grid.items()}
    for name, keys in spec.sweeps.items():
        varied = next(key for key, value in keys.items() if isinstance(value, list))
        fixed = {key: value for key, value in keys.items() if key != varied}
        named = named_grid + [key for key in fixed if key not in named_grid] + [varied]
        for value in keys[varied]:
            yield {**first, **fixed, varied: value}, named, (name, varied)


def run_tree(spec: StudySpec, point: dict, seed: int, overrides: list[tuple[str, Any]],
              chosen: dict[str, Any] | None = None) -> tuple[dict, set[str]]:
    """The run's config tree (base < methods < the search's chosen values < point < overrides) and the point keys
    that applied to it."""
    probe = copy.deepcopy(spec.base)
    for key, value in [*point.items(), *overrides]:
        set_dotted(probe, key, copy.deepcopy(value))
    method = (probe.get("method") or {}).get("name", DEFAULT_METHOD)
    tree = copy.deepcopy(spec.base)
    for key, value in [*spec.methods.get(method, {}).items(), *(chosen or {}).items(), *point.items(), *overrides]:
        set_dotted(tree, key, copy.deepcopy(value))
    tree["seed"] = seed
    dropped = _drop_foreign_method_keys(tree, method)
    return tree, {key for key in point if key not in dropped}


def _drop_foreign_method_keys(tree: dict, method: str) -> set[str]:
    """Removes ``method.*`` keys that another method owns (``method.r`` on a full fine-tuning run)."""
    if method not in METHODS or not isinstance(tree.get("method"), dict):
        return set()
    own = {f.name for f in dataclasses.fields(METHODS[method].config_class)}
    valid = set(all_keys())
    foreign = {key for key in tree["method"] if key not in own and f"method.{key}" in valid}
    for key in foreign:
        del tree["method"][key]
    return {f"method.{key}" for key in foreign}


def _unused_key_errors(spec: StudySpec, used: set[str]) -> list[str]:
    varied = [(f"grid.{key}", key) for key, values in spec.grid.items() if len(values) > 1]
    varied += [(f"sweeps.{name}.{key}", key) for name, keys in spec.sweeps.items() for key in keys]
    return [f"{where} applies to no run of this study ({key} is a setting of another method)"
            for where, key in varied if key not in used]


def _describe_point(point: dict, seed: int) -> str:
    return "run " + ", ".join([f"{key}={_plain(value)}" for key, value in point.items()] + [f"seed={seed}"])


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else json.loads(json.dumps(value))


def dedup_key(cfg: RunConfig) -> str:
    """Runs with the same resolved config are one run (a sweep point equal to a grid point trains once)."""
    tree = dataclasses.asdict(cfg)
    tree["name"] = tree["output_dir"] = None
    if tree["train"]["learning_rate"] is None:
        tree["train"]["learning_rate"] = METHODS[cfg.method.name].default_learning_rate(cfg.model.name)
    return json.dumps(tree, sort_keys=True)


# ---------------------------------------------------------------------------------------------- naming


def model_short_name(name: str) -> str:
    """google/flan-t5-large -> flan-t5-large; /data/models/my-t5/ -> my-t5."""
    return _safe(Path(name.rstrip("/")).name or name)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _value_token(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(_value_token(v) for v in value)
    return _safe(str(value))


def run_name(cfg: RunConfig, naming_keys: list[str], tag: str = "") -> str:
    """``<model>__<method>[__<key><value>...][__<tag>]__s<seed>``, from the values actually in the run's config."""
    flat = _flat_config(cfg)
    parts = [model_short_name(cfg.model.name), cfg.method.name]
    for key in naming_keys:
        if key in ("model.name", "method.name") or key not in flat:
            continue
        parts.append(_safe(names_of(key, cfg.method.name).run) + _value_token(flat[key]))
    return "__".join(parts + ([tag] if tag else []) + [f"s{cfg.seed}"])


def _flat_config(cfg: RunConfig) -> dict[str, Any]:
    return flatten(dataclasses.asdict(cfg))


def _name_runs(runs: dict[str, PlannedRun], naming: dict[str, tuple[list[str], RunConfig, str]],
               output: Path) -> None:
    """Names every run; two different configs that would share a name get a short config hash each."""
    names = {key: run_name(cfg, keys, tag) for key, (keys, cfg, tag) in naming.items()}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    for key, planned in runs.items():
        name = names[key]
        if counts[name] > 1:
            name += "__" + hashlib.sha256(key.encode()).hexdigest()[:6]
        planned.name = name
        planned.config = dataclasses.replace(planned.config, name=name, output_dir=str(output / "runs" / name))
