"""The report: statistics against scipy and hand values, and the report built from synthetic run directories."""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from medsum import rundir
from medsum.errors import MedsumError
from medsum.report import build_report, summary_text, write_report
from medsum.report.plots import pareto_frontier
from medsum.report.stats import (
    bootstrap_interval,
    holm,
    mean_sd,
    paired_comparison,
    sign_flip_p_value,
    t_interval,
)
from medsum.report.tables import mean_pm_sd

ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# ---------------------------------------------------------------------------------------------- statistics


def test_mean_and_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, statistics.stdev([1, 2, 3, 4])))
    assert mean_sd([1.0, 2.0, 3.0, 4.0])[1] == pytest.approx(math.sqrt(5 / 3))  # n - 1, not n
    mean, sd = mean_sd([7.0])
    assert mean == 7.0 and math.isnan(sd)


def test_t_interval_matches_scipy_and_hand_value():
    values = [1.0, 2.0, 3.0, 4.0]
    low, high = t_interval(values)
    expected = scipy_stats.t.interval(0.95, 3, loc=2.5, scale=scipy_stats.sem(values))
    assert (low, high) == pytest.approx(expected)
    assert high - 2.5 == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-6)  # t(0.975, 3) * sd / sqrt(n)
    assert all(math.isnan(x) for x in t_interval([3.0]))


def test_exact_sign_flip_p_values_by_hand():
    assert sign_flip_p_value([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)  # only all-plus and all-minus reach |mean| 1
    assert sign_flip_p_value([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 32)
    assert sign_flip_p_value([0.0, 0.0]) == 1.0
    assert sign_flip_p_value([1.0, -1.0]) == 1.0


def test_exact_sign_flip_matches_scipy_permutation_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(10, 2, 12), rng.normal(9, 2, 12)
    scipy_p = scipy_stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                                           permutation_type="samples", n_resamples=np.inf,
                                           alternative="two-sided").pvalue
    assert sign_flip_p_value(a - b) == pytest.approx(scipy_p)


def test_sampled_sign_flip_for_many_examples():
    rng = np.random.default_rng(0)
    null = rng.normal(0, 1, 200)
    assert 0.05 < sign_flip_p_value(null) <= 1.0
    assert sign_flip_p_value(null + 5.0) == pytest.approx(1 / 10_001)  # never 0: (1 + hits) / (1 + resamples)
    assert sign_flip_p_value(null) == sign_flip_p_value(null)  # seeded: the report rebuilds identically


def test_bootstrap_interval():
    assert bootstrap_interval([2.0] * 10) == pytest.approx((2.0, 2.0))
    rng = np.random.default_rng(1)
    d = rng.normal(1.0, 1.0, 400)
    low, high = bootstrap_interval(d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)  # the normal-theory interval, close for n = 400
    assert low < d.mean() < high
    assert (low, high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.03)


def test_holm_adjustment_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.5, float("nan")])
    assert adjusted[0] == 0.5 and math.isnan(adjusted[1])


def test_paired_comparison_direction():
    result = paired_comparison([3.0, 4.0, 5.0], [1.0, 1.0, 1.0])
    assert result.difference == pytest.approx(3.0) and result.n == 3
    assert result.low >= 2.0 and result.high <= 4.0 and result.p_value == pytest.approx(0.25)


def test_mean_pm_sd_format():
    assert mean_pm_sd([43.34, 43.70]) == "43.52 ± 0.25"  # sample sd: 0.36 / sqrt(2)
    assert mean_pm_sd([43.52]) == "43.52 ± –"


def test_pareto_frontier():
    points = [(100, 5.0), (10, 3.0), (1000, 4.0), (50, 3.0), (5000, 6.0)]
    assert pareto_frontier(points) == [(10, 3.0), (100, 5.0), (5000, 6.0)]


# ---------------------------------------------------------------------------------------------- synthetic runs


def make_run(root: Path, name: str, method: str, seed: int, shift: float, *, r: int | None = None,
             sweep: dict | None = None, grid: bool = True, examples: int = 20) -> dict:
    """A finished run directory, written through medsum.rundir as the trainer writes it, with per-example scores
    around ``30 + shift``."""
    run = root / "runs" / name
    rng = np.random.default_rng(seed)
    rows = [{"id": f"ex{i}", "prediction": "p", "reference": "r",
             **{k: float(30 + shift + i % 5 + rng.normal(0, 0.5) - 5 * j) for j, k in enumerate(ROUGE)}}
            for i in range(examples)]
    rundir.write_predictions(run, rows)
    method_tree = {"name": method, **({"r": r} if r is not None else {})}
    rundir.write_config(run, {"name": name, "seed": seed, "output_dir": str(run), "model": {"name": "tiny"},
                              "data": {"max_source_tokens": 512}, "method": method_tree,
                              "train": {"learning_rate": 3e-4}})
    trainable = {"lora": 1000 * (r or 16), "full": 700_000, "prompt_tuning": 1280}[method]
    metrics = rundir.Metrics(
        model="tiny", method=method, method_config={k: v for k, v in method_tree.items() if k != "name"}, seed=seed,
        params={"base": 700_000, "trainable": trainable, "total": 700_000 + trainable,
                "trainable_pct": 100 * trainable / (700_000 + trainable)},
        test={k: statistics.mean(row[k] for row in rows) for k in ROUGE} | {"empty_predictions": 0},
        efficiency={"train_seconds": 10.0 + seed, "peak_memory_bytes": 2 ** 30, "adapter_bytes": 4096,
                    "train_tokens_per_second": 1000.0},
        hardware={"device_type": "cpu"},
        rouge={"use_stemmer": True, "references": "full reference text from the data",
               "rougeLsum_sentence_splitter": "regex"})
    rundir.atomic_write_json(run / rundir.MEMBERSHIP, {"study": "synthetic", "grid": grid, "sweeps": sweep or {}})
    return rundir.write_metrics(run, metrics)


@pytest.fixture
def synthetic(tmp_path):
    """lora (r=16) ~5 points above full over 3 seeds, a 2-point rank sweep, one failed and one pending run."""
    metrics = {}
    for seed in (1, 2, 3):
        metrics[f"lora{seed}"] = make_run(tmp_path, f"tiny__lora__s{seed}", "lora", seed, 5.0 + 0.3 * seed, r=16,
                                          sweep={"lora_rank": {"key": "method.r", "value": 16}})
        metrics[f"full{seed}"] = make_run(tmp_path, f"tiny__full__s{seed}", "full", seed, 0.2 * seed)
        make_run(tmp_path, f"tiny__lora__r4__s{seed}", "lora", seed, 1.0, r=4, grid=False,
                 sweep={"lora_rank": {"key": "method.r", "value": 4}})
    rundir.atomic_write_text(tmp_path / "runs" / "tiny__prompt_tuning__s1" / rundir.ERROR,
                             "ValueError: loss is nan at step 3\n\nTraceback ...")
    (tmp_path / "runs" / "tiny__prompt_tuning__s2").mkdir()
    return tmp_path, metrics


def test_summary_agrees_with_the_runs_metrics(synthetic):
    root, metrics = synthetic
    summary = (write_report(root) / "summary.md").read_text()
    for method in ("lora", "full"):
        for key in ROUGE:
            values = [metrics[f"{method}{seed}"]["test"][key] for seed in (1, 2, 3)]
            assert f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" in summary
        low, high = t_interval([metrics[f"{method}{s}"]["test"]["rouge1"] for s in (1, 2, 3)])
        assert f"[{low:.2f}, {high:.2f}]" in summary
    assert "| tiny | lora (r=16) |" in summary and "| tiny | full |" in summary
    assert "tiny__lora__r4" not in summary.split("## Sensitivity")[0]  # sweep-only points stay out of the main table


def test_report_lists_failed_runs_and_counts_statuses(synthetic):
    root, _ = synthetic
    summary = (write_report(root) / "summary.md").read_text()
    assert "11 runs: 9 done, 1 failed, 0 running, 1 pending" in summary
    assert "`tiny__prompt_tuning__s1` | ValueError: loss is nan at step 3" in summary


def test_results_csv_has_one_row_per_run(synthetic):
    root, metrics = synthetic
    rows = list(csv.DictReader(open(write_report(root) / "results.csv")))
    assert len(rows) == 11
    row = next(r for r in rows if r["run"] == "tiny__lora__s2")
    assert row["status"] == "done" and row["method.r"] == "16" and row["seed"] == "2"
    assert float(row["test.rouge1"]) == pytest.approx(metrics["lora2"]["test"]["rouge1"])
    assert row["params.trainable"] == "16000" and row["efficiency.train_seconds"] == "12.0"
    assert next(r for r in rows if r["run"] == "tiny__prompt_tuning__s1")["status"] == "failed"


def test_significance_uses_paired_per_example_scores(synthetic):
    root, _ = synthetic
    report = build_report(root)
    r1 = next(c for c in report.comparisons if c.metric == "rouge1")
    assert (r1.a, r1.b, r1.result.n) == ("lora (r=16)", "full", 20)
    # per example, lora's seeds average 5.6 above, full's 0.4 above the same base: a difference of 5.2 (+ noise)
    assert r1.result.difference == pytest.approx(5.2, abs=0.3)
    assert r1.result.low < r1.result.difference < r1.result.high
    assert r1.p_holm < 0.05
    summary = (write_report(root) / "summary.md").read_text()
    assert "significant: lora (r=16) higher" in summary and "Seeds are pooled" in summary


def test_an_indistinguishable_pair_is_called_not_significant(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path, f"tiny__lora__s{seed}", "lora", seed, 0.0, r=16)
        make_run(tmp_path, f"tiny__full__s{seed}", "full", seed, 0.0)
    summary = (write_report(tmp_path) / "summary.md").read_text()
    assert "**not significant**" in summary
    assert "40,960" not in summary  # prompt tuning's own note appears only where the study ran it


def test_sweep_table_and_plots(synthetic):
    root, _ = synthetic
    folder = write_report(root)
    summary = (folder / "summary.md").read_text()
    assert "## Sensitivity: lora_rank (method.r)" in summary
    sweep_rows = [line for line in summary.split("## Sensitivity")[1].splitlines() if line.startswith("| 4 ")
                  or line.startswith("| 16 ")]
    assert len(sweep_rows) == 2
    for stem in ("methods_tiny", "sweep_lora_rank", "efficiency_frontier"):
        assert (folder / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (folder / f"{stem}.svg").read_text()
    assert not (folder / "sweep_prompt_tokens.png").exists()


def test_notes_state_rouge_settings_and_the_prompt_tuning_count(synthetic):
    root, _ = synthetic
    make_run(root, "tiny__prompt_tuning__s3", "prompt_tuning", 3, 0.0)
    summary = (write_report(root) / "summary.md").read_text()
    assert "Porter stemming on" in summary and "ROUGE-Lsum is summary-level" in summary
    assert "- **Prompt tuning**: medsum trains and counts only the encoder's soft prompt" in summary
    assert "40,960" in summary and "sources truncated at 512 tokens" in summary
    assert "randomly initialised" in summary  # the tiny model's numbers are labelled as such
    tex = (root / "report" / "summary.tex").read_text()
    assert "$\\pm$" in tex and "\\toprule" in tex and "lora (r=16)" in tex


def test_report_is_a_pure_function_of_the_run_directories(synthetic):
    root, _ = synthetic
    first = (write_report(root) / "summary.md").read_text()
    (root / "report" / "stale.png").write_bytes(b"old")
    second = (write_report(root) / "summary.md").read_text()
    assert first == second
    assert not (root / "report" / "stale.png").exists()  # the folder is replaced whole


def test_summary_text_is_the_main_table(synthetic):
    root, metrics = synthetic
    text = summary_text(root)
    values = [metrics[f"full{s}"]["test"]["rouge1"] for s in (1, 2, 3)]
    assert f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" in text
    assert "Significance" not in text


def test_a_running_marker_of_a_live_process_counts_as_running(synthetic):
    root, _ = synthetic
    pending = root / "runs" / "tiny__prompt_tuning__s2"
    rundir.atomic_write_json(pending / rundir.RUNNING, {"pid": os.getpid(), "host": os.uname().nodename})
    assert "1 running" in (write_report(root) / "summary.md").read_text()


def test_a_folder_without_runs_is_refused(tmp_path):
    with pytest.raises(MedsumError, match="no runs/ folder"):
        write_report(tmp_path)


# ---------------------------------------------------------------------------------------------- baselines, measures


def _measured(words: float, novel: float) -> dict:
    from medsum.measures import MEASURES

    return {**dict.fromkeys(MEASURES), "words": words, "novel_1gram_rate": novel, "novel_2gram_rate": novel,
            "coverage": 1 - novel, "density": 2.0, "flesch_kincaid_grade": 12.0}


def make_measured(root: Path, name: str, seed: int, shift: float, words: float, novel: float, *,
                  baseline: str | None = None, model_metric: float | None = None, empty: int = 0) -> dict:
    """A finished run (or, with ``baseline``, a baseline run directory) whose rows carry measures: ``words + i``
    words and novel rates ``novel`` for example i."""
    from medsum.measures import row_means

    run = root / "runs" / name
    rows = [{"id": f"ex{i}", "prediction": "p", "reference": "r",
             **{k: 30.0 + shift + i % 5 - 5 * j for j, k in enumerate(ROUGE)}, "measures": _measured(words + i, novel),
             **({"model_metrics": {"bertscore_f1": model_metric}} if model_metric is not None else {})}
            for i in range(20)]
    rundir.write_predictions(run, rows)
    test = {k: statistics.mean(r[k] for r in rows) for k in ROUGE} | {
        "empty_predictions": empty, "examples": 20, "measures": row_means(rows)}
    if model_metric is not None:
        test["model_metrics"] = {"bertscore_f1": model_metric, "bertscore_model": "/models/tiny-bert"}
    if baseline:
        rundir.write_config(run, {"baseline": baseline, "data": {"max_source_tokens": 512}})
        metrics = rundir.BaselineMetrics(
            model="extractive", method=baseline, seed=None, params={"trainable": 0, "total": 0}, test=test, rouge={},
            versions={}, baseline={"name": baseline, "description": f"the {baseline} baseline", "word_budget": 100,
                                   "word_budget_from": "mean reference length", "uses_budget": baseline != "oracle"})
    else:
        rundir.write_config(run, {"name": name, "seed": seed, "model": {"name": "tiny"}, "method": {"name": "lora"}})
        metrics = rundir.Metrics(model="tiny", method="lora", method_config={}, seed=seed,
                                 params={"trainable": 1000, "total": 10_000, "trainable_pct": 10.0}, test=test)
    rundir.atomic_write_json(run / rundir.MEMBERSHIP, {"study": "measured", "grid": True, "sweeps": {},
                                                       **({"baseline": baseline} if baseline else {})})
    return rundir.write_metrics(run, metrics)


@pytest.fixture
def with_baselines(tmp_path):
    """lora over 2 seeds (60 + i words, 40% novel), lead (100 + i words, a copy, BERTScore 0.9) and the oracle."""
    for seed in (1, 2):
        make_measured(tmp_path, f"tiny__lora__s{seed}", seed, 0.0, 60.0, 0.4, empty=seed)
    make_measured(tmp_path, "baseline__lead", 0, -5.0, 100.0, 0.0, baseline="lead", model_metric=0.9)
    make_measured(tmp_path, "baseline__oracle", 0, 20.0, 80.0, 0.0, baseline="oracle")
    return tmp_path


def test_baselines_are_rows_of_every_table_and_compared_with_each_variant(with_baselines):
    report = build_report(with_baselines)
    assert [g.label for g in report.baselines] == ["lead", "oracle (extractive upper bound)"]
    pairs = {(c.a, c.b) for c in report.comparisons}
    assert pairs == {("lora", "lead"), ("lora", "oracle (extractive upper bound)")}  # baselines not with each other
    summary = (write_report(with_baselines) / "summary.md").read_text()
    main = summary.split("## Beyond ROUGE")[0]
    assert "| extractive | lead | – |" in main and "| extractive | oracle (extractive upper bound) | – |" in main
    assert "## Baselines" in summary and "the lead baseline | 100 |" in summary
    tex = (with_baselines / "report" / "summary.tex").read_text()
    assert "extractive & lead" in tex
    rows = list(csv.DictReader(open(with_baselines / "report" / "results.csv")))
    assert {r["run"] for r in rows} >= {"baseline__lead", "baseline__oracle"}


def test_the_beyond_rouge_table_holds_each_measure_over_seeds(with_baselines):
    summary = (write_report(with_baselines) / "summary.md").read_text()
    beyond = summary.split("## Beyond ROUGE")[1].split("## Cost")[0]
    lora = next(line for line in beyond.splitlines() if line.startswith("| tiny | lora |"))
    cells = [c.strip() for c in lora.split("|")[1:-1]]
    # empty predictions 1 and 2 of 20: 5% and 10%; words 60..79: mean 69.5 in both seeds; novel unigrams 40%
    assert cells[3:7] == ["7.50 ± 3.54", "69.50 ± 0.00", "–", "–"]
    assert cells[7] == "40.00 ± 0.00" and cells[11] == "60.00 ± 0.00"  # novel 1-grams, coverage (%)
    lead = next(line for line in beyond.splitlines() if line.startswith("| extractive | lead |"))
    assert "109.50 ± –" in lead and "0.00 ± –" in lead
    assert "BERTScore F1" in beyond and "0.90 ± –" in beyond  # lead has it: the model-based column appears
    assert "95% confidence intervals" in beyond


def test_paired_tests_on_the_measures_with_their_own_holm_family(with_baselines):
    report = build_report(with_baselines)
    words = next(c for c in report.measure_comparisons if (c.a, c.b, c.metric) == ("lora", "lead", "words"))
    assert words.result.n == 20 and words.result.difference == pytest.approx(-40.0)  # 60 + i against 100 + i
    assert words.p_holm < 0.05
    assert {c.metric for c in report.measure_comparisons} >= {"novel_2gram_rate", "coverage", "flesch_kincaid_grade"}
    summary = (write_report(with_baselines) / "summary.md").read_text()
    section = summary.split("## Significance beyond ROUGE")[1]
    assert "**-40.00 (p" in section and "+40.00 (p" in section  # words; novel 1-grams in percent points


def test_the_report_says_which_tokenization_and_which_model_metrics_were_skipped(with_baselines):
    summary = (write_report(with_baselines) / "summary.md").read_text()
    notes = summary.split("## Notes")[1]
    assert "lower-cased `[a-z0-9]+` words" in notes and "textstat 0.7.8" in notes and "rouge-score's tokenizer" in notes
    assert "**BERTScore**: from the local model /models/tiny-bert (1 of 4 runs)" in notes
    assert "**NLI faithfulness**: skipped (evaluate.nli_model is not set" in notes


def test_the_abstraction_plot_and_baseline_reference_lines(with_baselines):
    folder = write_report(with_baselines)
    for stem in ("rouge1_vs_novel_bigrams", "methods_tiny", "efficiency_frontier"):
        assert (folder / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (folder / "methods_tiny.svg").read_text()
    assert "lead (baseline)" in svg and "oracle (extractive upper bound)" in svg
    assert "novel-bigram rate" in (folder / "rouge1_vs_novel_bigrams.svg").read_text()


def test_a_study_of_baselines_alone_compares_them(tmp_path):
    make_measured(tmp_path, "baseline__lead", 0, -5.0, 100.0, 0.0, baseline="lead")
    make_measured(tmp_path, "baseline__oracle", 0, 20.0, 80.0, 0.0, baseline="oracle")
    report = build_report(tmp_path)
    assert {(c.a, c.b) for c in report.comparisons} == {("lead", "oracle (extractive upper bound)")}
    assert "| extractive | lead |" in summary_text(tmp_path)


def test_sweep_tables_and_plots_show_the_baselines(synthetic):
    root, _ = synthetic
    make_measured(root, "baseline__lead", 0, -5.0, 100.0, 0.0, baseline="lead")
    folder = write_report(root)
    sweep = (folder / "summary.md").read_text().split("## Sensitivity")[1]
    assert "| baseline | extractive | lead | – |" in sweep
    assert "lead (baseline)" in (folder / "sweep_lora_rank.svg").read_text()
