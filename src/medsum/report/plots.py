"""The report's plots, each as PNG and SVG: methods per model, ROUGE-1 along each sweep, and ROUGE-1 against
trainable parameters (the efficiency frontier). Error bars are sample standard deviations over seeds."""

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
        written += _save(method_comparison(model, [g for g in report.groups if g.model == model]), folder,
                         f"methods_{_slug(model)}")
    for name, (key, groups) in report.sweeps.items():
        if groups:
            written += _save(sweep_plot(name, key, groups), folder, f"sweep_{_slug(name)}")
    if report.variants:
        written += _save(efficiency_frontier(report.variants), folder, "efficiency_frontier")
    if report.trials:
        from medsum.report.search import write_trial_plots

        written += write_trial_plots(report, folder, _save)
    return written


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


def method_comparison(model: str, groups: list[Group]):
    """Grouped bars: the four ROUGE scores of each method on one model, mean with sd error bars."""
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
    axes.set_xticks(positions, [ROUGE_NAMES[k] for k in ROUGE_KEYS])
    axes.set_ylabel("test ROUGE F1 (× 100)")
    axes.set_xlabel("metric")
    axes.set_title(f"Methods on {model} (mean ± sd over {_seeds_text(groups)})")
    axes.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(axis="y", alpha=0.3)
    return figure


def sweep_plot(name: str, key: str, groups: list[Group]):
    """ROUGE-1 against the swept value, one line per model (and method), sd error bars."""
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


def efficiency_frontier(groups: list[Group]):
    """ROUGE-1 against trainable parameters (log axis); the frontier joins the variants no cheaper one beats."""
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
    axes.legend(handles=handles, fontsize="small")


def pareto_frontier(points: list[tuple[Any, float]]) -> list[tuple[Any, float]]:
    """The points no other point beats with at most as many parameters, by increasing parameter count."""
    frontier: list[tuple[Any, float]] = []
    for params, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or score > frontier[-1][1]:
            frontier.append((params, score))
    return frontier
