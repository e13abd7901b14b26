"""The report beyond ROUGE: the per-example measures (``medsum.measures``) and the optional model-based metrics
(``medsum.model_metrics``) of every variant and baseline, their paired tests, the baselines and the tokenizations.

Each cell over seeds is the mean ± sample sd of the runs' means (metrics.json test["measures"]); intervals are 95%
t intervals over seeds. Rates (novel n-grams, coverage, repeated trigrams, unsupported numbers) are shown in
percent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medsum.evaluate import SENTENCE_SPLITTER
from medsum.measures import TOKENIZATION
from medsum.report.formatting import ALPHA, interval, markdown_table, mean_pm_sd

if TYPE_CHECKING:
    from medsum.report import Comparison, Group, Report

PERCENT = ("novel_1gram_rate", "novel_2gram_rate", "novel_3gram_rate", "novel_4gram_rate", "coverage",
           "repeated_trigram_rate", "unsupported_number_rate", "empty_rate")
TITLES = {"empty_rate": "Empty predictions (%)", "words": "Words", "sentences": "Sentences",
          "compression": "Compression (source/summary words)",
          **{f"novel_{n}gram_rate": f"Novel {n}-grams (%)" for n in (1, 2, 3, 4)},
          "coverage": "Fragment coverage (%)", "density": "Fragment density",
          "repeated_trigram_rate": "Repeated trigrams (%)", "numbers": "Numbers",
          "unsupported_numbers": "Unsupported numbers", "unsupported_number_rate": "Unsupported numbers (%)",
          "flesch_kincaid_grade": "Flesch-Kincaid grade (FKGL)", "coleman_liau": "Coleman-Liau index (CLI)",
          "bertscore_precision": "BERTScore P", "bertscore_recall": "BERTScore R", "bertscore_f1": "BERTScore F1",
          "nli_faithfulness": "NLI faithfulness (SummaC-ZS)"}
THEMES = {
    "Length and abstraction": ("empty_rate", "words", "sentences", "compression", "novel_1gram_rate",
                               "novel_2gram_rate", "novel_3gram_rate", "novel_4gram_rate", "coverage", "density"),
    "Repetition, numbers and readability": ("repeated_trigram_rate", "numbers", "unsupported_numbers",
                                            "unsupported_number_rate", "flesch_kincaid_grade", "coleman_liau"),
}
MODEL_METRICS = ("bertscore_precision", "bertscore_recall", "bertscore_f1", "nli_faithfulness")
# the measures the paired tests cover (one Holm family per model; the model-based metrics join where present)
TESTED = ("words", "novel_1gram_rate", "novel_2gram_rate", "coverage", "density", "repeated_trigram_rate",
          "unsupported_numbers", "flesch_kincaid_grade", "coleman_liau")
MODEL_METRIC_SETTINGS = {"BERTScore": ("evaluate.bertscore_model", "bertscore_f1"),
                         "NLI faithfulness": ("evaluate.nli_model", "nli_faithfulness")}


# ---------------------------------------------------------------------------------------------- values


def run_value(metrics: dict, key: str) -> float | None:
    """One run's mean of a measure (in the report's unit: rates in percent); None where it has none."""
    test = metrics.get("test") or {}
    if key == "empty_rate":
        value = test.get("empty_predictions") / test["examples"] if test.get("examples") else None
    else:
        value = (test.get("measures") or {}).get(key, (test.get("model_metrics") or {}).get(key))
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return 100 * value if key in PERCENT else float(value)


def values(group: Group, key: str) -> list[float]:
    found = [run_value(run.metrics, key) for run in group.runs]
    return [v for v in found if v is not None]


def members(report: Report) -> list[Group]:
    """The grid's variants, then the baselines: the rows of every table."""
    return report.groups + report.baselines


def _seeds(group: Group) -> str:
    return "–" if group.baseline else str(len(group.runs))


def model_metric_columns(report: Report) -> tuple[str, ...]:
    return tuple(key for key in MODEL_METRICS if any(values(g, key) for g in members(report)))


# ---------------------------------------------------------------------------------------------- sections


def beyond_rouge_section(report: Report) -> str:
    """The measures of every variant and baseline: mean ± sd over seeds, then 95% intervals, by theme."""
    themes = dict(THEMES)
    extra = model_metric_columns(report)
    if extra:
        themes["Model-based metrics"] = extra
    parts = ["## Beyond ROUGE: length, abstraction, repetition, numbers, readability",
             "Per-example measures (`medsum.measures`; their tokenization in the notes) averaged per run, then "
             "mean ± sd over seeds; 95% t intervals over seeds below each table. Rates in percent. Novel n-grams "
             "and fragment coverage/density (Grusky et al., 2018) say how much a summary copies its source "
             "(0% novel, 100% coverage: a copy); unsupported numbers are numbers of the summary that appear nowhere "
             "in the source."]
    for theme, keys in themes.items():
        header = ["Model", "Method", "Seeds"] + [TITLES[k] for k in keys]
        rows = [[g.model, g.label, _seeds(g)] + [mean_pm_sd(values(g, k)) for k in keys] for g in members(report)]
        ci_rows = [[g.model, g.label, _seeds(g)] + [interval(values(g, k)) for k in keys] for g in members(report)]
        parts += [f"### {theme} (mean ± sd over seeds)", markdown_table(header, rows),
                  f"95% confidence intervals ({theme.lower()}):", markdown_table(header, ci_rows)]
    return "\n\n".join(parts)


def measure_significance_section(report: Report) -> str:
    head = ("## Significance beyond ROUGE\n\nThe same paired sign-flip permutation test as for ROUGE, on each "
            "example's measure (seeds pooled per example; an example where a measure is undefined for either side "
            "is left out). One Holm family per model over all these comparisons, apart from ROUGE's. Each cell: "
            f"A − B in the table's unit, then p (Holm); **bold** where p (Holm) < {ALPHA}.")
    if not report.measure_comparisons:
        return head + "\n\nNo comparison: a single variant and no baseline."
    cells: dict[tuple[str, str, str], dict[str, Comparison]] = {}
    for c in report.measure_comparisons:
        cells.setdefault((c.model, c.a, c.b), {})[c.metric] = c
    metrics = list(dict.fromkeys(c.metric for c in report.measure_comparisons))
    rows = [[model, a, b] + [_cell(found.get(m), m) for m in metrics] for (model, a, b), found in cells.items()]
    return head + "\n\n" + markdown_table(["Model", "A", "B"] + [TITLES[m] for m in metrics], rows)


def _cell(c: Comparison | None, metric: str) -> str:
    if c is None or c.result.n == 0 or c.p_holm != c.p_holm:
        return "–"
    scale = 100 if metric in PERCENT else 1
    p = "< 0.0001" if c.p_holm < 1e-4 else f"{c.p_holm:.4f}"
    text = f"{scale * c.result.difference:+.2f} (p {p})"
    return f"**{text}**" if c.p_holm < ALPHA else text


def baselines_section(report: Report) -> str:
    """What each baseline is, with its word budget (``medsum.baselines``)."""
    rows = []
    for g in report.baselines:
        about = g.runs[0].metrics.get("baseline") or {}
        uses = about.get("uses_budget", True)
        budget = str(about.get("word_budget", "–")) if uses else "none (stops when ROUGE stops rising)"
        rows.append([g.method, str(about.get("description", "")), budget,
                     str(about.get("word_budget_from", "–")) if uses else "–"])
    return ("## Baselines\n\nExtractive baselines, written as run directories without training "
            "(`runs/baseline__<name>/`), scored exactly as the trained runs on the same test rows. The oracle selects "
            "sentences knowing the "
            "reference: it is the extractive upper bound, not a method.\n\n"
            + markdown_table(["Baseline", "What it is", "Word budget", "Budget from"], rows))


def tokenization_notes(report: Report) -> list[str]:
    """Which tokenization each measure uses, and which model-based metrics ran or were skipped."""
    lines = [f"- **Tokenization of the measures**: ROUGE: rouge-score's tokenizer with Porter stemming "
             f"(ROUGE-Lsum sentences: {SENTENCE_SPLITTER}); "
             + "; ".join(f"{what}: {how}" for what, how in TOKENIZATION.items())
             + "; BERTScore and NLI faithfulness: each model's own tokenizer."]
    found = [(run.metrics.get("test") or {}).get("model_metrics") or {} for g in members(report) for run in g.runs]
    for name, (key, column) in MODEL_METRIC_SETTINGS.items():
        having = [m for m in found if column in m]
        if having:
            used = sorted({str(m.get(key.split(".")[1])) for m in having})
            lines.append(f"- **{name}**: from the local model {', '.join(used)} ({len(having)} of {len(found)} runs).")
        else:
            lines.append(f"- **{name}**: skipped ({key} is not set; it takes a local model directory, nothing is "
                         f"downloaded; `medsum evaluate --help` adds it to finished runs).")
    return lines
