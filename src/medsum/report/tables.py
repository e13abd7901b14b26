"""The report's tables: results.csv (one row per run), summary.md and summary.tex (the paper's tables).

Every ROUGE cell over seeds reads ``mean ± sd`` (sample sd, 2 decimals); intervals are 95% t intervals over seeds.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsum.config import names_of
from medsum.evaluate import ROUGE_KEYS, ROUGE_NAMES
from medsum.methods import METHODS
from medsum.models import is_tiny
from medsum.report.stats import t_interval
from medsum.rundir import atomic_write_text
from medsum.settings import flatten

if TYPE_CHECKING:
    from medsum.report import Comparison, Group, Report

METRIC_SECTIONS = ("test", "validation", "params", "efficiency", "hardware")
ALPHA = 0.05


def write_tables(report: Report, folder: Path, sections: list[str] = ()) -> None:
    """``sections``: more of summary.md, after the significance tests (the search's: ``report.search``)."""
    atomic_write_text(folder / "results.csv", results_csv(report))
    atomic_write_text(folder / "summary.md", summary_markdown(report, sections))
    atomic_write_text(folder / "summary.tex", summary_latex(report))


# ---------------------------------------------------------------------------------------------- formatting


def mean_pm_sd(values: list[float]) -> str:
    """``43.52 ± 0.18``; a single seed has no sd (``43.52 ± –``); no value at all is ``–``."""
    if not values:
        return "–"
    if len(values) < 2:
        return f"{values[0]:.2f} ± –"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def interval(values: list[float]) -> str:
    low, high = t_interval(values)
    return "–" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def count(value: Any) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) else "–"


def percent(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.2f}%" if value >= 0.1 else f"{value:.2g}%"


def size(value: Any) -> str:
    if not isinstance(value, (int, float)) or value <= 0:
        return "–"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _seeds(group: Group) -> str:
    return ", ".join(str(run.seed) for run in group.runs)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- results.csv


def results_csv(report: Report) -> str:
    """One row per run directory: status, study membership, every config key, and the metrics it recorded."""
    rows = [_csv_row(record) for record in report.records]
    columns: dict[str, None] = dict.fromkeys(["run", "status", "seed", "grid", "sweeps"])
    for record in report.records:  # config keys first, in config.yaml's order, then what the runs measured
        columns.update(dict.fromkeys(k for k in record.config if k not in ("name", "output_dir", "seed")))
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _csv_row(record) -> dict[str, Any]:
    sweeps = record.membership.get("sweeps", {})
    row: dict[str, Any] = {"run": record.name, "status": record.status, "seed": record.seed,
                           "grid": record.in_grid,
                           "sweeps": ";".join(f"{n}:{p['key']}={p['value']}" for n, p in sweeps.items())}
    row.update({key: _cell(value) for key, value in record.config.items() if key not in ("name", "output_dir", "seed")})
    for section in METRIC_SECTIONS:
        row.update({f"{section}.{k}": _cell(v) for k, v in flatten(record.metrics.get(section) or {}).items()})
    row["error"] = record.error
    return row


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


# ---------------------------------------------------------------------------------------------- summary.md


def rouge_rows(groups: list[Group]) -> list[list[str]]:
    return [[g.model, g.label, _seeds(g)] + [mean_pm_sd(g.values("test", k)) for k in ROUGE_KEYS] for g in groups]


def console_table(report: Report) -> str:
    """The main table, as printed at the end of ``study run`` and ``demo``."""
    if not report.groups:
        return "no finished runs yet"
    header = ["model", "method", "seeds"] + [f"{ROUGE_NAMES[k]} (mean ± sd)" for k in ROUGE_KEYS]
    return markdown_table(header, rouge_rows(report.groups))


def summary_markdown(report: Report, sections: list[str] = ()) -> str:
    parts = [f"# Study {report.study}: results", _status_line(report)]
    if report.groups:
        parts += [_main_section(report), _cost_section(report)]
    parts += [_sweep_section(name, key, groups) for name, (key, groups) in report.sweeps.items()]
    if report.groups:
        parts.append(_significance_section(report))
    parts += sections
    if report.failed():
        parts.append(_failed_section(report))
    if report.plots:
        parts.append("## Plots\n\n" + "\n".join(f"- [{name}]({name}) ({name.replace('.png', '.svg')})"
                                                  for name in report.plots if name.endswith(".png")))
    parts.append(_notes_section(report))
    return "\n\n".join(parts) + "\n"


def _status_line(report: Report) -> str:
    counts: dict[str, int] = {}
    for record in report.records:
        counts[record.status] = counts.get(record.status, 0) + 1
    text = f"{len(report.records)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}"
                                                        for s in ("done", "failed", "running", "pending"))
    text += ". Computed from the run directories under `runs/`; `medsum study report DIR` rebuilds it."
    if any(is_tiny(g.model) for g in report.variants):
        text += ("\n\n**The tiny models are randomly initialised and trained for a few steps: its numbers show the "
                 "machinery, not which method is better.**")
    return text


def _main_section(report: Report) -> str:
    ci_rows = [[g.model, g.label, str(len(g.runs))] + [interval(g.values("test", k)) for k in ROUGE_KEYS]
               for g in report.groups]
    return "\n\n".join([
        "## Test ROUGE (mean ± sd over seeds)",
        markdown_table(["Model", "Method", "Seeds"] + [ROUGE_NAMES[k] for k in ROUGE_KEYS], rouge_rows(report.groups)),
        "### 95% confidence intervals of the mean (t distribution, n − 1 degrees of freedom, over seeds)",
        markdown_table(["Model", "Method", "n"] + [ROUGE_NAMES[k] for k in ROUGE_KEYS], ci_rows),
    ])


def _cost_section(report: Report) -> str:
    rows = []
    for g in report.groups:
        rows.append([g.model, g.label, count(g.first("params", "trainable")),
                     percent(g.first("params", "trainable_pct")), count(g.first("params", "total")),
                     size(_mean(g.values("efficiency", "peak_memory_bytes"))),
                     _seconds(g.values("efficiency", "train_seconds")),
                     _rate(g.values("efficiency", "train_tokens_per_second")),
                     size(g.first("efficiency", "adapter_bytes"))])
    header = ["Model", "Method", "Trainable params", "Trainable %", "Total params", "Peak memory (mean)",
              "Train time (s, mean ± sd)", "Train tokens/s", "Saved weights"]
    return "## Cost\n\n" + markdown_table(header, rows)


def _seconds(values: list[float]) -> str:
    return mean_pm_sd(values).replace(" ± –", "") if values else "–"


def _rate(values: list[float]) -> str:
    return f"{_mean(values):,.0f}" if values else "–"


def _sweep_section(name: str, key: str, groups: list[Group]) -> str:
    title = names_of(key, groups[0].method if groups else None).title
    rows = [[_plain(g.sweep_value), g.model, g.method, str(len(g.runs))]
            + [mean_pm_sd(g.values("test", k)) for k in ROUGE_KEYS]
            + [interval(g.values("test", "rouge1")), count(g.first("params", "trainable"))] for g in groups]
    header = [title, "Model", "Method", "Seeds"] + [ROUGE_NAMES[k] for k in ROUGE_KEYS] + ["ROUGE-1 95% CI",
                                                                                           "Trainable params"]
    return (f"## Sensitivity: {name} ({key})\n\nOne factor varied, everything else as in the grid's first point; "
            f"each value over the same seeds.\n\n" + markdown_table(header, rows))


def _plain(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _significance_section(report: Report) -> str:
    head = ("## Significance\n\nPaired sign-flip permutation test on per-example ROUGE (two-sided; exact up to 16 "
            "examples, else 10,000 seeded random sign flips). Seeds are pooled: each test example's score is first "
            "averaged over a variant's seeds, so the unit of analysis is the test example and the pairs are the "
            "examples both variants were tested on. The interval is a paired bootstrap (10,000 resamples, "
            "percentile) of the mean difference A − B. p (Holm) corrects for all comparisons on one model; a "
            f"difference is called significant when p (Holm) < {ALPHA}.")
    if not report.comparisons:
        return head + "\n\nNo comparison: every model has a single variant."
    rows = [[c.model, c.a, c.b, ROUGE_NAMES[c.metric], str(c.result.n), f"{c.result.difference:+.2f}",
             f"[{c.result.low:+.2f}, {c.result.high:+.2f}]", _p(c.result.p_value), _p(c.p_holm), verdict(c)]
            for c in report.comparisons]
    table = markdown_table(["Model", "A", "B", "Metric", "Examples", "A − B", "95% CI", "p", "p (Holm)", "Verdict"],
                           rows)
    plain = [f"- {sentence(c)}" for c in report.comparisons if c.metric == "rouge1"]
    return head + "\n\n" + table + "\n\nROUGE-1 in words:\n\n" + "\n".join(plain)


def verdict(c: Comparison) -> str:
    if math.isnan(c.p_holm):
        return "no shared test examples"
    if c.p_holm >= ALPHA:
        return "not significant"
    return f"significant: {c.a if c.result.difference > 0 else c.b} higher"


def sentence(c: Comparison) -> str:
    r = c.result
    if math.isnan(c.p_holm):
        return f"{c.model}: {c.a} vs {c.b}: no shared test examples, no test."
    text = (f"{c.model}: {c.a} − {c.b} = {r.difference:+.2f} ROUGE-1 (95% CI {r.low:+.2f} to {r.high:+.2f}, "
            f"p = {_p(r.p_value)}, Holm {_p(c.p_holm)}, {r.n} examples): ")
    if c.p_holm >= ALPHA:
        return text + "**not significant**; the data do not show a difference."
    return text + f"significant, {c.a if r.difference > 0 else c.b} is higher."


def _failed_section(report: Report) -> str:
    rows = [[f"`{r.name}`", r.error or "(no message)"] for r in report.failed()]
    return ("## Failed runs\n\nNot in the tables above; `medsum study run` again retries them (the reason is in "
            "`runs/<run>/error.txt`).\n\n" + markdown_table(["Run", "Error"], rows))


def _notes_section(report: Report) -> str:
    metrics = [r.metrics for r in report.records if r.status == "done"]
    rouge = next((m.get("rouge", {}) for m in metrics if m.get("rouge")), {})
    version = next((m.get("versions", {}).get("rouge-score") for m in metrics if m.get("versions")), None)
    empty = sum(int(m.get("test", {}).get("empty_predictions", 0)) for m in metrics)
    stemming = "on" if rouge.get("use_stemmer", True) else "off"
    notes = [
        f"- **ROUGE settings**: rouge-score{f' {version}' if version else ''}, F1 × 100, Porter stemming {stemming}, "
        f"scored against {rouge.get('references', 'the full reference texts')}. "
        f"Empty predictions are kept and score 0 ({empty} in all finished runs).",
        "- **ROUGE-L vs ROUGE-Lsum**: ROUGE-L is the longest common subsequence over each text as one sequence; "
        "ROUGE-Lsum is summary-level (union LCS over sentences), computed after splitting prediction and reference "
        f"into one sentence per line ({rouge.get('rougeLsum_sentence_splitter', 'sentence splitter')}). On long "
        "summaries Lsum is markedly higher than L; published PubMed numbers mix the two, so compare like with like.",
        _input_note(report),
        *_method_notes(report),
        "- **Statistics**: sd is the sample standard deviation (n − 1); intervals over seeds use the t distribution, "
        "which is wide with few seeds (with 2 seeds the 95% t factor is 12.71).",
    ]
    if any(m.get("hardware", {}).get("device_type") == "cpu" for m in metrics):
        notes.append("- **Peak memory on CPU** is the process's peak resident memory; runs that shared one process "
                     "(the local executor) report at least the peak of the runs before them.")
    return "## Notes\n\n" + "\n".join(n for n in notes if n)


def _method_notes(report: Report) -> list[str]:
    """Each method's own note (``Method.report_note``), for the methods the study ran."""
    ran = sorted({r.config.get("method.name") for r in report.records} & set(METHODS))
    return [f"- **{METHODS[name].label.capitalize()}**: {METHODS[name].report_note}" for name in ran
            if METHODS[name].report_note]


def _input_note(report: Report) -> str:
    def values(key: str) -> str:
        found = sorted({str(r.config[key]) for r in report.records if key in r.config})
        return "/".join(found) if found else "?"

    return (f"- **Input length**: sources truncated at {values('data.max_source_tokens')} tokens, training targets at "
            f"{values('data.max_target_tokens')} tokens (ROUGE still uses the full references); test generation with "
            f"{values('generate.num_beams')} beams, at most {values('generate.max_new_tokens')} new tokens.")


# ---------------------------------------------------------------------------------------------- summary.tex


def summary_latex(report: Report) -> str:
    """booktabs tables for a paper: the main ROUGE table with cost columns, and the ROUGE-1 comparisons."""
    lines = [f"% Study {_tex(report.study)}: generated by medsum from runs/ (needs \\usepackage{{booktabs}})"]
    if not report.groups:
        return "\n".join(lines + ["% no finished runs"]) + "\n"
    lines += ["\\begin{table}[t]", "\\centering", "\\begin{tabular}{llrrrrrr}", "\\toprule",
              "Model & Method & R-1 & R-2 & R-L & R-Lsum & Trainable & \\% \\\\", "\\midrule"]
    for g in report.groups:
        cells = [_tex(g.model), _tex(g.label)] + [mean_pm_sd(g.values("test", k)).replace("±", "$\\pm$")
                                                  for k in ROUGE_KEYS]
        cells += [count(g.first("params", "trainable")),
                  _tex(percent(g.first("params", "trainable_pct")))]
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}",
              f"\\caption{{Test ROUGE F1 (mean $\\pm$ sample sd over seeds) of study {_tex(report.study)}.}}",
              "\\end{table}"]
    rouge1 = [c for c in report.comparisons if c.metric == "rouge1"]
    if rouge1:
        lines += ["", "\\begin{table}[t]", "\\centering", "\\begin{tabular}{lllrrl}", "\\toprule",
                  "Model & A & B & $\\Delta$ R-1 & $p$ (Holm) & 95\\% CI \\\\", "\\midrule"]
        lines += [f"{_tex(c.model)} & {_tex(c.a)} & {_tex(c.b)} & {c.result.difference:+.2f} & {_tex(_p(c.p_holm))} & "
                  f"[{c.result.low:+.2f}, {c.result.high:+.2f}] \\\\" for c in rouge1]
        lines += ["\\bottomrule", "\\end{tabular}",
                  "\\caption{Paired permutation tests on per-example ROUGE-1, seeds pooled per example.}",
                  "\\end{table}"]
    return "\n".join(lines) + "\n"


TEX_ESCAPES = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
               "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "<": "$<$"}


def _tex(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^<]", lambda match: TEX_ESCAPES[match.group()], text)
