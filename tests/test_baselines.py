"""The extractive baselines: sentence choice by hand on short texts, and a baseline run directory on the real sample
scored as a trained run is (ROUGE recomputed with the stock rouge-score scorer)."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import read_jsonl
from medsum import baselines, measures
from medsum.config import DataConfig, EvaluateConfig
from medsum.evaluate import score_example

ARTICLE = ("BACKGROUND\nThe cat sat on the mat. A dog barked at the cat.\nRESULTS\nThe mat was red. Birds sang all day "
           "long. The dog slept.")


def test_the_word_budget_is_the_mean_reference_length_in_words_rounded():
    assert baselines.word_budget(["a b c", "d, e-f g h"]) == 4  # 3 and 5 words (e-f is two): mean 4
    assert baselines.word_budget(["a b", "c d e"]) == 2  # 2.5 rounds to even
    assert baselines.word_budget([]) == 1


def test_heading_lines_are_no_sentences():
    assert baselines.article_sentences(ARTICLE) == ["The cat sat on the mat.", "A dog barked at the cat.",
                                                    "The mat was red.", "Birds sang all day long.", "The dog slept."]


def test_lead_takes_whole_first_sentences_until_the_budget():
    sentences = baselines.article_sentences(ARTICLE)
    assert baselines.lead(sentences, 6) == ["The cat sat on the mat."]  # 6 words reach 6
    assert baselines.lead(sentences, 7) == sentences[:2]  # 6 < 7: one more sentence, 12 words
    assert baselines.lead(sentences, 1000) == sentences
    assert baselines.summarize("lead", ARTICLE, "", 7) == "The cat sat on the mat.\nA dog barked at the cat."


def test_the_oracle_picks_the_sentences_of_the_reference():
    sentences = baselines.article_sentences(ARTICLE)
    assert baselines.oracle(sentences, "The mat was red.") == ["The mat was red."]
    # two reference sentences from the middle and the end: both, in article order
    assert baselines.oracle(sentences, "The dog slept. Birds sang all day long.") == sentences[3:]
    assert baselines.oracle([], "anything") == []


def test_lexrank_and_textrank_choose_article_sentences_within_the_budget_without_nltk_data(monkeypatch, tmp_path):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])  # no punkt or any other NLTK download to be found
    sentences = baselines.article_sentences(ARTICLE)
    for method in ("lexrank", "textrank"):
        chosen = baselines.ranked(sentences, 8, method)
        assert chosen and set(chosen) <= set(sentences)
        assert chosen == [s for s in sentences if s in chosen]  # article order
        words = [len(measures.words(s)) for s in chosen]
        assert sum(words[:-1]) < 8 <= sum(words) or chosen == sentences  # whole sentences up to the budget
    assert baselines.ranked([], 8, "lexrank") == []


def test_the_oracle_beats_the_other_baselines_on_rouge1_on_a_small_fixture():
    articles = [
        ("Aspirin lowers fever. It was tested in 40 adults. Side effects were mild. Most patients recovered fast.",
         "In 40 adults aspirin lowered fever with mild side effects."),
        ("We studied mice. The gene controls growth. Knockout mice were small. Growth resumed with treatment.",
         "Knockout of the gene made mice small; treatment restored growth."),
    ]
    for article, reference in articles:
        scores = {name: score_example((reference, baselines.summarize(name, article, reference, 9)))["rouge1"]
                  for name in baselines.BASELINES}
        assert scores["oracle"] >= max(scores.values())


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("baselines")
    data = DataConfig(path=str(data_dir), max_train_examples=8, max_eval_examples=3)
    runs = {}
    for name in baselines.BASELINES:
        run = baselines.BaselineRun(name, root / name, data, EvaluateConfig())
        runs[name] = (run, baselines.write_baseline(run))
    return runs


def test_a_baseline_run_directory_is_scored_as_a_run(baseline_runs, test_rows, data_dir):
    from rouge_score import rouge_scorer

    train = read_jsonl(data_dir / "train.jsonl.gz")[:8]
    budget = round(statistics.mean(len(measures.words(r["abstract"])) for r in train))
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    references = {str(r["id"]): r["abstract"] for r in test_rows}
    for name, (run, metrics) in baseline_runs.items():
        rows = read_jsonl(run.run_dir / "predictions.jsonl")
        assert [r["id"] for r in rows] == [str(r["id"]) for r in test_rows[:3]]  # the capped test split's rows
        assert metrics["method"] == name and metrics["baseline"]["word_budget"] == budget
        stock = statistics.mean(100 * scorer.score(references[r["id"]], r["prediction"])["rouge1"].fmeasure
                                for r in rows)
        assert metrics["test"]["rouge1"] == pytest.approx(stock, abs=1e-9)
        assert metrics["test"]["measures"] == measures.row_means(rows)
        assert json.loads((run.run_dir / "metrics.json").read_text()) == metrics
        assert "model_metrics" not in metrics["test"]  # none configured: skipped


def test_lead_copies_the_start_of_the_article(baseline_runs, test_rows):
    run, _ = baseline_runs["lead"]
    articles = {str(r["id"]): r["article"] for r in test_rows}
    for row in read_jsonl(run.run_dir / "predictions.jsonl"):
        assert row["measures"]["novel_1gram_rate"] == 0 and row["measures"]["coverage"] == 1
        assert row["measures"]["words"] >= baseline_runs["lead"][1]["baseline"]["word_budget"]
        first = baselines.article_sentences(articles[row["id"]])
        assert row["prediction"].split("\n") == first[:len(row["prediction"].split("\n"))]


def test_the_oracle_is_the_extractive_upper_bound_on_rouge1(baseline_runs):
    scores = {name: metrics["test"]["rouge1"] for name, (_, metrics) in baseline_runs.items()}
    assert scores["oracle"] == max(scores.values())
    assert "upper bound" in baseline_runs["oracle"][1]["baseline"]["description"]


def test_medsum_evaluate_rescores_a_baseline(baseline_runs, tmp_path):
    import shutil

    from medsum.rescore import rescore_run

    run, metrics = baseline_runs["lexrank"]
    copy = tmp_path / "lexrank"
    shutil.copytree(run.run_dir, copy)
    assert rescore_run(copy) == metrics["test"]["measures"]
