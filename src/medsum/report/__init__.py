"""The study report: a pure function of the run directories under ``DIR/runs/``, rebuilt by ``medsum study report``.

``write_report(DIR)`` reads every run (``report.runs``), groups the finished ones into variants (one config, several
seeds), compares the methods on each model (``report.stats``), and writes ``DIR/report/``: results.csv,
summary.md, summary.tex and the plots (``report.tables``, ``report.plots``). The folder is built beside the old one
and swapped in whole, so a reader never sees half of an old report mixed with half of a new one.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.config import names_of
from medsum.evaluate import ROUGE_KEYS
from medsum.methods import METHODS
from medsum.report.runs import RunRecord, load_runs, load_trials
from medsum.report.stats import PairedResult, holm, mean_sd, paired_comparison

__all__ = ["write_report", "summary_text", "build_report", "Report", "Group", "Comparison", "load_runs"]


@dataclass
class Group:
    """The finished seeds of one variant (model + method + settings)."""

    model: str
    method: str
    setting: str
    runs: list[RunRecord]
    sweep_value: Any = None

    @property
    def label(self) -> str:
        return f"{self.method} ({self.setting})" if self.setting else self.method

    @property
    def in_grid(self) -> bool:
        return any(run.in_grid for run in self.runs)

    def values(self, section: str, key: str) -> list[float]:
        return [float(run.metrics[section][key]) for run in self.runs
                if isinstance(run.metrics.get(section, {}).get(key), (int, float))]

    def stat(self, section: str, key: str) -> tuple[float, float]:
        return mean_sd(self.values(section, key))

    def first(self, section: str, key: str) -> Any:
        return self.runs[0].metrics.get(section, {}).get(key)


@dataclass
class Comparison:
    model: str
    a: str
    b: str
    metric: str
    result: PairedResult
    p_holm: float = float("nan")


@dataclass
class Report:
    study: str
    records: list[RunRecord]
    groups: list[Group]  # the grid's variants: the main table
    variants: list[Group] = field(default_factory=list)  # every variant, sweep points included
    sweeps: dict[str, tuple[str, list[Group]]] = field(default_factory=dict)  # name -> (varied key, one per value)
    comparisons: list[Comparison] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    trials: list[RunRecord] = field(default_factory=list)  # the search's trials (runs/search/), if it searched
    default_comparisons: list[Comparison] = field(default_factory=list)  # tuned vs default (report.search)

    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status == "failed"]


# ---------------------------------------------------------------------------------------------- building


def build_report(output: Path, compare: bool = True) -> Report:
    """Everything the report says, computed from the run directories (``compare=False`` skips the tests)."""
    records = load_runs(output)
    done = [r for r in records if r.status == "done"]
    variants = group_runs(done)
    study = next((r.membership["study"] for r in records if r.membership.get("study")), Path(output).name)
    report = Report(study, records, [g for g in variants if g.in_grid], variants, sweep_groups(done, variants),
                    trials=load_trials(output))
    if compare:
        report.comparisons = compare_methods(report.groups)
        report.default_comparisons = compare_with_defaults(report.groups, report.variants)
    return report


def group_runs(done: list[RunRecord]) -> list[Group]:
    """One Group per variant, ordered by model, then method, then setting."""
    by_variant: dict[str, list[RunRecord]] = {}
    for record in done:
        by_variant.setdefault(record.variant, []).append(record)
    settings = _setting_labels(by_variant)
    groups = [Group(str(runs[0].metrics.get("model")), str(runs[0].metrics.get("method")), settings[variant],
                    sorted(runs, key=lambda r: str(r.seed))) for variant, runs in by_variant.items()]
    return sorted(groups, key=lambda g: (g.model, _method_order(g.method), g.setting))


def _method_order(method: str) -> tuple[int, str]:
    names = list(METHODS)
    return (names.index(method) if method in names else len(names), method)


def _setting_labels(by_variant: dict[str, list[RunRecord]]) -> dict[str, str]:
    """Names the keys that tell apart variants of the same model and method (``r=4``), nothing else."""
    configs = {variant: json.loads(variant) for variant in by_variant}
    cells: dict[tuple, list[dict]] = {}
    for config in configs.values():
        cells.setdefault((config.get("model.name"), config.get("method.name")), []).append(config)
    varying = set()
    for members in cells.values():
        for key in set().union(*members):
            if len({json.dumps(m.get(key), sort_keys=True) for m in members}) > 1:
                varying.add(key)
    return {variant: ", ".join(f"{names_of(k, config.get('method.name')).short}={_show(config[k])}"
                               for k in sorted(varying) if k in config)
            for variant, config in configs.items()}


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def sweep_groups(done: list[RunRecord], groups: list[Group]) -> dict[str, tuple[str, list[Group]]]:
    """For each sweep the runs say they belong to: (varied key, one Group per value, ordered by value)."""
    sweeps: dict[str, tuple[str, list[Group]]] = {}
    for record in done:
        for name, point in record.membership.get("sweeps", {}).items():
            sweeps.setdefault(name, (point["key"], []))
    for name, (_, members) in sweeps.items():
        for group in groups:
            points = [r.membership["sweeps"][name] for r in group.runs if name in r.membership.get("sweeps", {})]
            if points:
                members.append(Group(group.model, group.method, group.setting,
                                     [r for r in group.runs if name in r.membership.get("sweeps", {})],
                                     sweep_value=points[0]["value"]))
        members.sort(key=lambda g: (_sortable(g.sweep_value), g.model))
    return sweeps


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def compare_methods(groups: list[Group]) -> list[Comparison]:
    """Every pair of variants on the same model, on each ROUGE score, paired over the shared test examples.

    Seeds are pooled by averaging each example's score over a variant's seeds: the unit is the test example.
    Holm's correction runs over all comparisons of one model.
    """
    comparisons = []
    for model in dict.fromkeys(g.model for g in groups):
        found = []
        for a, b in itertools.combinations([g for g in groups if g.model == model], 2):
            for metric in ROUGE_KEYS:
                scores_a, scores_b = paired_scores(a, b, metric)
                found.append(Comparison(model, a.label, b.label, metric, paired_comparison(scores_a, scores_b)))
        for comparison, adjusted in zip(found, holm([c.result.p_value for c in found])):
            comparison.p_holm = adjusted
        comparisons += found
    return comparisons


def compare_with_defaults(groups: list[Group], variants: list[Group]) -> list[Comparison]:
    """Each tuned grid variant (a study's search) against the same model and method with the untuned settings
    (search.compare_defaults), on each ROUGE score, paired as ``compare_methods``; Holm over those of one model."""
    defaults = [g for g in variants if any(r.membership.get("defaults") for r in g.runs)]
    comparisons = []
    for model in dict.fromkeys(g.model for g in groups):
        found = []
        for tuned in (g for g in groups if g.model == model and any(r.membership.get("tuned") for r in g.runs)):
            for default in (d for d in defaults if (d.model, d.method) == (model, tuned.method) and d is not tuned):
                for metric in ROUGE_KEYS:
                    scores_a, scores_b = paired_scores(tuned, default, metric)
                    found.append(Comparison(model, f"{tuned.method} tuned", f"{default.method} default", metric,
                                            paired_comparison(scores_a, scores_b)))
        for comparison, adjusted in zip(found, holm([c.result.p_value for c in found])):
            comparison.p_holm = adjusted
        comparisons += found
    return comparisons


def paired_scores(a: Group, b: Group, metric: str) -> tuple[list[float], list[float]]:
    """Per-example scores, each averaged over the group's seeds, for the examples every run of both groups has."""
    runs = a.runs + b.runs
    shared = set.intersection(*(set(run.per_example) for run in runs)) if runs else set()
    ids = sorted(shared)

    def pooled(group: Group) -> list[float]:
        return [sum(float(run.per_example[i][metric]) for run in group.runs) / len(group.runs) for i in ids]

    return pooled(a), pooled(b)


# ---------------------------------------------------------------------------------------------- writing


def write_report(output: Path) -> Path:
    """Writes ``output/report/`` from the run directories and returns its path."""
    from medsum.report import plots, tables

    output = Path(output)
    report = build_report(output)
    target = output / "report"
    with rundir.atomic_dir(target) as staging:
        report.plots = plots.write_plots(report, staging)
        tables.write_tables(report, staging, _search_sections(report))
    return target


def _search_sections(report: Report) -> list[str]:
    """summary.md's part on the study's search, when it searched (``report.search``)."""
    if not report.trials:
        return []
    from medsum.report.search import search_section

    return [search_section(report)]


def summary_text(output: Path) -> str:
    """The main table (mean ± sd over seeds) as printed at the end of a study or the demo."""
    from medsum.report import tables

    return tables.console_table(build_report(Path(output), compare=False))
