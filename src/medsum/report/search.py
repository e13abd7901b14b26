"""The search's part of the report (a study with a ``search:`` block): the trials, each method's chosen settings,
what the search cost, tuned against default settings where the grid ran both, and validation ROUGE-1 against the
searched values. Read from the trial run directories (``runs/search/``) and the grid runs' study.json alone; the
tuned-vs-default tests are computed with the others (``report.compare_with_defaults``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsum.evaluate import ROUGE_NAMES
from medsum.report.runs import RunRecord
from medsum.report.tables import _p, markdown_table, verdict

if TYPE_CHECKING:
    from medsum.report import Comparison, Group, Report

SELECTION_NOTE = ("Selection used validation data only: each trial was scored on the validation split "
                  "(train.eval_max_examples examples), and the test split played no part in choosing the settings "
                  "(the trials' own test scores are ignored).")


def info(trial: RunRecord) -> dict[str, Any]:
    return trial.membership.get("search", {})


def searches(trials: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Search name -> its trials, by trial number."""
    grouped: dict[str, list[RunRecord]] = {}
    for trial in trials:
        grouped.setdefault(str(info(trial).get("name", trial.path.parent.name)), []).append(trial)
    return grouped


def chosen(groups: list[Group]) -> dict[str, dict[str, Any]]:
    """Search name -> the choice the grid's runs were trained with (their study.json)."""
    found = {}
    for group in groups:
        for run in group.runs:
            tuned = run.membership.get("tuned")
            if tuned:
                found[tuned["search"]] = tuned
    return found


def validation(trial: RunRecord, metric: str = "rouge1") -> float | None:
    value = trial.metrics.get("validation", {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------- summary.md


def search_section(report: Report) -> str:
    """The search, in summary.md: how it ran, the chosen settings, the trials, the cost, tuned vs default."""
    first = info(report.trials[0])
    metric = str(first.get("metric", "rouge1"))
    by_search = searches(report.trials)
    choices = chosen(report.groups)
    parts = [f"## Search: every method tuned with the same budget\n\n{first.get('trials', '?')} trials per method "
             f"(Optuna TPE, sampler seeded from search.seed), every trial trained with run seed "
             f"{first.get('seed', '?')} and scored by its best validation {ROUGE_NAMES.get(metric, metric)}; each "
             f"method's grid runs use its best trial's settings, so the test tables and significance tests above "
             f"compare the tuned methods. **{SELECTION_NOTE}**",
             "### Chosen settings\n\n" + markdown_table(
                 ["Search", "Chosen values", "Trial", f"Validation {ROUGE_NAMES.get(metric, metric)}",
                  "Complete / failed trials"], _chosen_rows(by_search, choices)),
             "### Trials\n\n" + markdown_table(
                 ["Search", "Trial", "Status", "Searched values", "Validation ROUGE-1"]
                 + ([f"Validation {ROUGE_NAMES.get(metric, metric)}"] if metric != "rouge1" else [])
                 + ["Train s", "Chosen"], _trial_rows(by_search, choices, metric)),
             "### What the search cost\n\n" + markdown_table(
                 ["Search", "Trials", "Train seconds", "Grid runs' train seconds"], _cost_rows(report, by_search))]
    if report.default_comparisons:
        parts.append(_defaults_part(report.default_comparisons))
    return "\n\n".join(parts)


def _values(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _chosen_rows(by_search: dict[str, list[RunRecord]], choices: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, trials in by_search.items():
        choice = choices.get(name)
        ended = f"{sum(t.status == 'done' for t in trials)} / {sum(t.status == 'failed' for t in trials)}"
        if choice:
            rows.append([name, _values(choice["params"]), str(choice["trial"]), _score(choice.get("value")), ended])
        else:
            rows.append([name, "none yet (no complete trial, or the grid has not run)", "–", "–", ended])
    return rows


def _trial_rows(by_search: dict[str, list[RunRecord]], choices: dict[str, dict], metric: str) -> list[list[str]]:
    rows = []
    for name, trials in by_search.items():
        for trial in trials:
            number = info(trial).get("trial")
            status = trial.status + (f": {trial.error}" if trial.error else "")
            seconds = trial.metrics.get("efficiency", {}).get("train_seconds")
            picked = "✓" if choices.get(name, {}).get("trial") == number else ""
            rows.append([name, str(number), status, _values(info(trial).get("params", {})), _score(validation(trial))]
                        + ([_score(validation(trial, metric))] if metric != "rouge1" else [])
                        + [f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "–", picked])
    return rows


def _cost_rows(report: Report, by_search: dict[str, list[RunRecord]]) -> list[list[str]]:
    rows, total, total_grid = [], 0.0, 0.0
    for name, trials in by_search.items():
        seconds = sum(float(t.metrics.get("efficiency", {}).get("train_seconds") or 0) for t in trials)
        grid = sum(float(r.metrics.get("efficiency", {}).get("train_seconds") or 0) for g in report.groups
                   for r in g.runs if (r.membership.get("tuned") or {}).get("search") == name)
        total, total_grid = total + seconds, total_grid + grid
        rows.append([name, str(len(trials)), f"{seconds:.1f}", f"{grid:.1f}"])
    rows.append(["all searches", str(sum(len(t) for t in by_search.values())), f"{total:.1f}", f"{total_grid:.1f}"])
    return rows


def _defaults_part(comparisons: list[Comparison]) -> str:
    rows = [[c.model, c.a, c.b, ROUGE_NAMES[c.metric], str(c.result.n), f"{c.result.difference:+.2f}",
             f"[{c.result.low:+.2f}, {c.result.high:+.2f}]", _p(c.result.p_value), _p(c.p_holm), verdict(c)]
            for c in comparisons]
    return ("### Tuned against default settings\n\nThe same paired tests as under Significance, each tuned method "
            "against its runs with the untuned settings (search.compare_defaults); Holm over these comparisons "
            "of one model.\n\n" + markdown_table(["Model", "A", "B", "Metric", "Examples", "A − B", "95% CI", "p",
                                                 "p (Holm)", "Verdict"], rows))


# ---------------------------------------------------------------------------------------------- the plot


def trial_plot(trials: list[RunRecord], key: str, choices: dict[str, dict]):
    """Validation ROUGE-1 against one searched value, one series per search (method); the chosen trials ringed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    everything = []
    for name, members in searches(trials).items():
        scored = [t for t in members if key in info(t).get("params", {}) and validation(t) is not None]
        points = sorted((info(t)["params"][key], validation(t)) for t in scored)
        if points:
            everything += points
            line, = axes.plot(*zip(*points), marker="o", linestyle="none", label=name)
            picked = [t for t in scored if info(t).get("trial") == choices.get(name, {}).get("trial")]
            axes.plot([info(t)["params"][key] for t in picked], [validation(t) for t in picked], marker="o",
                      markersize=13, markerfacecolor="none", color=line.get_color(), linestyle="none")
    kinds = {info(t).get("space", {}).get(key, {}).get("kind") for t in trials}
    log = bool(everything) and all(x > 0 for x, _ in everything) and ("log_uniform" in kinds or _spread(everything))
    if log:
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(f"{key}{' (log scale)' if log else ''}")
    axes.set_ylabel("validation ROUGE-1 F1 (× 100)")
    axes.set_title(f"Search: validation ROUGE-1 against {key} (ringed: chosen)")
    if everything:
        axes.legend(fontsize="small")
    axes.grid(alpha=0.3, which="both")
    return figure


def _spread(points: list[tuple[Any, float]]) -> bool:
    values = [float(p[0]) for p in points]
    return max(values) / min(values) >= 10


def plotted_keys(trials: list[RunRecord]) -> list[str]:
    """The searched keys with numeric values, in the order the trials name them."""
    keys: dict[str, None] = {}
    for trial in trials:
        for key, value in info(trial).get("params", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                keys[key] = None
    return list(keys)


def plot_stem(key: str) -> str:
    return "search_" + key.replace(".", "_")


def write_trial_plots(report: Report, folder: Path, save) -> list[str]:
    written = []
    for key in plotted_keys(report.trials):
        written += save(trial_plot(report.trials, key, chosen(report.groups)), folder, plot_stem(key))
    return written
