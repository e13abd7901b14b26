"""The report's plots, each as PNG and SVG: methods per model, ROUGE-1 along each sweep, ROUGE-1 against
trainable parameters (the efficiency frontier), and ROUGE-1 against the novel-bigram rate (copying versus
abstraction). Error bars are sample standard deviations over seeds. The extractive baselines are labelled dashed
reference lines in the first three and marked points in the last."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsum.config import names_of
from medsum.evaluate import ROUGE_KEYS, ROUGE_NAMES
from medsum.rundir import atomic_write_bytes

if TYPE_CHECKING:
    from medsum.report import Group, Report

ROUGE_AXIS = "ROUGE-1 F1 (× 100)"
MARKERS = "osD^vP*X"


def write_plots(report: Report, folder: Path) -> list[str]:
    """Draws every plot the runs support and returns the PNG/SVG file names written to ``folder``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is built on servers and in CI
    written = []
    for model in dict.fromkeys(g.model for g in report.groups):
        written += _save(method_comparison(model, [g for g in report.groups if g.model == model], report.baselines),
                         folder, f"methods_{_slug(model)}")
    for name, (key, groups) in report.sweeps.items():
        if groups:
            written += _save(sweep_plot(name, key, groups, report.baselines), folder, f"sweep_{_slug(name)}")
    if report.variants:
        written += _save(efficiency_frontier(report.variants, report.baselines), folder, "efficiency_frontier")
    if report.groups or report.baselines:
        written += _save(abstraction_plot(report.groups + report.baselines), folder, "rouge1_vs_novel_bigrams")
    if report.trials:
        from medsum.report.search import write_trial_plots

        written += write_trial_plots(report, folder, _save)
    return written


BASELINE_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))
BASELINE_COLORS = ("dimgrey", "tab:brown", "tab:olive", "black")
BASELINE_MARKERS = "XP*D"


def baseline_lines(axes, baselines: list[Group]) -> None:
    """Each baseline's mean ROUGE-1 as a labelled grey reference line across the axes."""
    for i, group in enumerate(baselines):
        mean, _ = group.stat("test", "rouge1")
        if mean == mean:
            axes.axhline(mean, label=baseline_label(group), **_baseline_style(i))


def _baseline_style(i: int) -> dict:
    return {"color": BASELINE_COLORS[i % len(BASELINE_COLORS)], "linestyle": BASELINE_STYLES[i % len(BASELINE_STYLES)],
            "linewidth": 1.2}


def baseline_label(group: Group) -> str:
    return group.label if group.method == "oracle" else f"{group.label} (baseline)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.split("/")[-1]).strip("-") or "x"


def _save(figure, folder: Path, stem: str) -> list[str]:
    import matplotlib.pyplot as plt

    names = []
    for suffix in ("png", "svg"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix, dpi=150, bbox_inches="tight")
        atomic_write_bytes(folder / f"{stem}.{suffix}", buffer.getvalue())
        names.append(f"{stem}.{suffix}")
    plt.close(figure)
    return names


def _seeds_text(groups: list[Group]) -> str:
    counts = sorted({len(g.runs) for g in groups})
    return f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds"


def method_comparison(model: str, groups: list[Group], baselines: list[Group] = ()):
    """Grouped bars: the four ROUGE scores of each method on one model, mean with sd error bars; each baseline's
    score a reference line over each metric's bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 + 1.4 * len(groups)), 4.2))
    width = 0.8 / len(groups)
    positions = np.arange(len(ROUGE_KEYS))
    for i, group in enumerate(groups):
        stats = [group.stat("test", k) for k in ROUGE_KEYS]
        means = [m for m, _ in stats]
        errors = [0.0 if np.isnan(sd) else sd for _, sd in stats]
        axes.bar(positions + (i - (len(groups) - 1) / 2) * width, means, width, yerr=errors, capsize=3,
                 label=group.label)
    _baseline_segments(axes, baselines, positions)
    axes.set_xticks(positions, [ROUGE_NAMES[k] for k in ROUGE_KEYS])
    axes.set_ylabel("test ROUGE F1 (× 100)")
    axes.set_xlabel("metric")
    axes.set_title(f"Methods on {model} (mean ± sd over {_seeds_text(groups)})")
    axes.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return figure


def sweep_plot(name: str, key: str, groups: list[Group], baselines: list[Group] = ()):
    """ROUGE-1 against the swept value, one line per model (and method), sd error bars; baselines as reference
    lines."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.0, 4.2))
    numeric = all(isinstance(g.sweep_value, (int, float)) and not isinstance(g.sweep_value, bool)
                  for g in groups)
    lines: dict[tuple[str, str], list[Group]] = {}
    for group in groups:
        lines.setdefault((group.model, group.method), []).append(group)
    for (model, method), members in lines.items():
        xs = [g.sweep_value if numeric else str(g.sweep_value) for g in members]
        stats = [g.stat("test", "rouge1") for g in members]
        axes.errorbar(xs, [m for m, _ in stats], yerr=[0.0 if sd != sd else sd for _, sd in stats], marker="o",
                      capsize=3, label=f"{method} on {model}")
    baseline_lines(axes, list(baselines))
    label = names_of(key, groups[0].method).axis
    if numeric:
        log = _spans_powers(groups)
        if log:
            axes.set_xscale("log", base=2)
            label += " (log scale)"
        values = sorted({g.sweep_value for g in groups})
        axes.set_xticks(values, [f"{v:g}" for v in values])
        axes.minorticks_off()
    axes.set_xlabel(label)
    axes.set_ylabel(ROUGE_AXIS)
    axes.set_title(f"Sensitivity: {name} (mean ± sd over {_seeds_text(groups)})")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def _spans_powers(groups: list[Group]) -> bool:
    values = [g.sweep_value for g in groups]
    return min(values) > 0 and max(values) / min(values) >= 4


def efficiency_frontier(groups: list[Group], baselines: list[Group] = ()):
    """ROUGE-1 against trainable parameters (log axis); the frontier joins the variants no cheaper one beats;
    baselines (no trainable parameters) as reference lines."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    methods = list(dict.fromkeys(g.method for g in groups))
    models = list(dict.fromkeys(g.model for g in groups))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    points = []
    for group in groups:
        trainable = group.first("params", "trainable")
        mean, sd = group.stat("test", "rouge1")
        if not isinstance(trainable, (int, float)) or trainable <= 0 or mean != mean:
            continue
        points.append((trainable, mean))
        axes.annotate(group.setting or group.method, (trainable, mean), textcoords="offset points", xytext=(4, 4),
                      fontsize="x-small")
        axes.errorbar([trainable], [mean], yerr=[0.0 if sd != sd else sd], capsize=3, linestyle="none",
                      marker=MARKERS[models.index(group.model) % len(MARKERS)],
                      color=colors[methods.index(group.method) % len(colors)])
    frontier = pareto_frontier(points)
    if len(frontier) > 1:
        axes.step(*zip(*frontier), where="post", color="grey", linestyle="--", linewidth=1)
    baseline_lines(axes, list(baselines))
    _frontier_legend(axes, methods, models, colors)
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters (count, log scale)")
    axes.set_ylabel(ROUGE_AXIS)
    axes.set_title("Efficiency frontier: ROUGE-1 vs trainable parameters")
    axes.grid(alpha=0.3, which="both")
    return figure


def _frontier_legend(axes, methods: list[str], models: list[str], colors: list[str]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[i % len(colors)], marker="o", linestyle="none", label=m)
               for i, m in enumerate(methods)]
    if len(models) > 1:
        handles += [Line2D([], [], color="black", marker=MARKERS[i % len(MARKERS)], linestyle="none", label=m)
                    for i, m in enumerate(models)]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="frontier"))
    baseline_handles = axes.get_legend_handles_labels()[0]  # only the baselines' lines carry a label
    axes.legend(handles=handles + baseline_handles, fontsize="small")


def pareto_frontier(points: list[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """The points no other point beats with at most as many parameters, by increasing parameter count."""
    frontier: list[tuple[Any, float]] = []
    for params, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or score > frontier[-1][1]:
            frontier.append((params, score))
    return frontier


def _baseline_segments(axes, baselines: list[Group], positions) -> None:
    """Each baseline's four ROUGE scores as labelled reference segments across each metric's bars."""
    for i, group in enumerate(baselines):
        for k, (position, metric) in enumerate(zip(positions, ROUGE_KEYS)):
            mean, _ = group.stat("test", metric)
            if mean == mean:
                axes.hlines(mean, position - 0.45, position + 0.45, **_baseline_style(i),
                            label=baseline_label(group) if k == 0 else None)


def abstraction_plot(groups: list[Group]):
    """ROUGE-1 against the novel-bigram rate (copying on the left, abstraction on the right), one point per variant
    (mean ± sd over seeds on both axes), the baselines marked with crosses and named."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    baselines = [g for g in groups if g.baseline]
    for group in groups:
        novel = [100 * v for v in _measure_values(group, "novel_2gram_rate")]
        rouge1 = group.values("test", "rouge1")
        if not novel or not rouge1:
            continue
        x, y = sum(novel) / len(novel), sum(rouge1) / len(rouge1)
        xerr, yerr = _sd(novel), _sd(rouge1)
        style, label = {"marker": "o"}, f"{group.label} on {group.model}"
        if group.baseline:
            i = baselines.index(group)
            style = {"marker": BASELINE_MARKERS[i % len(BASELINE_MARKERS)], "markersize": 8,
                     "color": BASELINE_COLORS[i % len(BASELINE_COLORS)]}
            label = baseline_label(group)
        axes.errorbar([x], [y], xerr=[xerr], yerr=[yerr], capsize=3, linestyle="none", label=label, **style)
        if group.baseline:
            axes.annotate(group.method, (x, y), textcoords="offset points", xytext=(5, 5), fontsize="x-small")
    axes.set_xlabel("novel bigrams of the summary absent from the source (%)")
    axes.set_ylabel(ROUGE_AXIS)
    axes.set_title("Copying versus abstraction: ROUGE-1 vs novel-bigram rate")
    if axes.get_legend_handles_labels()[0]:  # runs from before the measures have no point to show
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(alpha=0.3)
    return figure


def _measure_values(group: Group, key: str) -> list[float]:
    found = [(run.metrics.get("test", {}).get("measures") or {}).get(key) for run in group.runs]
    return [float(v) for v in found if isinstance(v, (int, float))]


def _sd(values: list[float]) -> float:
    import statistics

    return statistics.stdev(values) if len(values) > 1 else 0.0
