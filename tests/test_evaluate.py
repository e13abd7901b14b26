"""Evaluation: ROUGE against hand-computed values, stemming, empty predictions, rougeLsum's sentence split, argument
order, parallel scoring; the test step keeps empty predictions."""

from __future__ import annotations

import types

import pytest
from rouge_score import rouge_scorer

from medsum import evaluate
from medsum.evaluate import aggregate, generation_kwargs, rouge_per_example, score_example, split_sentences


def test_hand_computed_rouge():
    # reference: the cat sat on the mat / prediction: the cat lay on the mat
    # unigrams: the x2, cat, on, mat match: 5 of 6 both ways -> F1 5/6
    # bigrams: the-cat, on-the, the-mat match: 3 of 5 both ways -> F1 3/5
    # LCS: the cat on the mat = 5 of 6 -> F1 5/6; one sentence, so rougeLsum = rougeL
    scores = score_example(("the cat sat on the mat", "the cat lay on the mat"))
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)
    assert scores["rougeL"] == pytest.approx(100 * 5 / 6)
    assert scores["rougeLsum"] == pytest.approx(100 * 5 / 6)


def test_hand_computed_rouge_with_different_lengths():
    # reference 6 tokens, prediction 2 (the cat): P = 1, R = 2/6 -> F1 = 2PR/(P+R) = 1/2; bigram the-cat: 1/1, 1/5
    scores = score_example(("the cat sat on the mat", "the cat"))
    assert scores["rouge1"] == pytest.approx(50.0)
    assert scores["rouge2"] == pytest.approx(100 * 2 * (1 / 5) / (1 + 1 / 5))
    assert scores["rougeL"] == pytest.approx(50.0)


def test_identical_and_disjoint_texts():
    assert score_example(("tumour cells grow fast.", "tumour cells grow fast.")) == \
        {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}
    assert score_example(("tumour cells grow", "patients were enrolled")) == \
        {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}


def test_stemming_is_on():
    # stemmed (tokens longer than 3 letters): the dog are run / the dog run -> P = 3/3, R = 3/4, F1 = 6/7
    # without stemming only "the" would match (F1 2/7)
    scores = score_example(("the dogs are running", "the dog runs"))
    assert scores["rouge1"] == pytest.approx(100 * 6 / 7)
    unstemmed = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False).score("the dogs are running", "the dog runs")
    assert 100 * unstemmed["rouge1"].fmeasure == pytest.approx(100 * 2 / 7)


def test_empty_prediction_is_kept_and_scores_zero():
    references = ["the cat sat on the mat", "the dog ran"]
    per_example = rouge_per_example(references, ["the cat sat on the mat", ""])
    assert len(per_example) == 2
    assert per_example[1] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}
    assert aggregate(per_example) == {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0, "rougeLsum": 50.0}


def test_rouge_lsum_splits_sentences():
    # one sentence order swapped: the sentence-level LCS (the dog ran) is half of each text, while summary-level
    # LCS matches each reference sentence in full
    reference, prediction = "the cat sat. the dog ran.", "the dog ran. the cat sat."
    scores = score_example((reference, prediction))
    assert scores["rougeL"] == pytest.approx(50.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)
    assert scores["rouge1"] == pytest.approx(100.0)


def test_split_sentences():
    assert split_sentences("First one. Second one! Third?\nBACKGROUND\nvalue 3.5 kept") == \
        ["First one.", "Second one!", "Third?", "BACKGROUND", "value 3.5 kept"]
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []


def test_reference_comes_first():
    # rougeLsum's union-LCS is asymmetric: reference "tumor tumor" against two predicted sentences
    # [cells grow tumor] [grow tumor]: 1 hit, P = 1/5, R = 1/2 -> F1 2/7; the other way round: 2 hits -> F1 4/7
    reference, prediction = "tumor tumor", "cells grow tumor. grow tumor."
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    right = scorer.score("tumor tumor", "cells grow tumor\ngrow tumor")["rougeLsum"]
    swapped = scorer.score("cells grow tumor\ngrow tumor", "tumor tumor")["rougeLsum"]
    assert (right.precision, right.recall) != (swapped.precision, swapped.recall)
    assert 100 * right.fmeasure == pytest.approx(100 * 2 / 7)
    assert 100 * swapped.fmeasure == pytest.approx(100 * 4 / 7)
    assert score_example((reference, prediction))["rougeLsum"] == pytest.approx(100 * 2 / 7)
    assert rouge_per_example([reference], [prediction])[0]["rougeLsum"] == pytest.approx(100 * 2 / 7)


def test_scorer_is_called_reference_first(monkeypatch):
    calls = []
    original = rouge_scorer.RougeScorer.score

    def spy(self, target, prediction):
        calls.append((target, prediction))
        return original(self, target, prediction)

    monkeypatch.setattr(rouge_scorer.RougeScorer, "score", spy)
    score_example(("the reference text", "a prediction"))
    assert calls and all(target == "the reference text" for target, _ in calls)


def test_matches_rouge_score_on_real_text(test_rows):
    """medsum's scoring (memoized stemmer, sentence split for Lsum) equals the stock rouge-score scorer exactly."""
    references = [r["abstract"] for r in test_rows[:12]]
    predictions = [r["article"][:900] for r in test_rows[:12]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for got, reference, prediction in zip(rouge_per_example(references, predictions), references, predictions):
        want = scorer.score(reference, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert got[key] == 100 * want[key].fmeasure
        lsum = scorer.score("\n".join(evaluate.split_sentences(reference)),
                            "\n".join(evaluate.split_sentences(prediction)))["rougeLsum"]
        assert got["rougeLsum"] == 100 * lsum.fmeasure
        assert 0 < got["rougeLsum"] <= got["rouge1"] + 1e-9


def test_parallel_scoring_equals_serial(test_rows):
    references = [r["abstract"][:400] for r in test_rows[:70]]
    predictions = [r["abstract"][200:500] if i % 7 else "" for i, r in enumerate(test_rows[:70])]
    assert len(references) >= evaluate.PARALLEL_MIN_EXAMPLES
    serial = rouge_per_example(references, predictions, workers=1)
    parallel = rouge_per_example(references, predictions, workers=2)
    assert parallel == serial
    assert serial[0]["rouge1"] == 0.0 and serial[1]["rouge1"] > 0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        rouge_per_example(["a", "b"], ["a"])


def test_aggregate_is_the_mean():
    rows = [{"rouge1": 10.0, "rouge2": 0.0, "rougeL": 5.0, "rougeLsum": 6.0},
            {"rouge1": 30.0, "rouge2": 4.0, "rougeL": 15.0, "rougeLsum": 8.0}]
    assert aggregate(rows) == {"rouge1": 20.0, "rouge2": 2.0, "rougeL": 10.0, "rougeLsum": 7.0}
    assert aggregate([]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}


def test_generation_kwargs():
    beams = generation_kwargs(4, 2.0, 3, 30, 256)
    assert beams == {"num_beams": 4, "max_new_tokens": 256, "min_new_tokens": 30, "no_repeat_ngram_size": 3,
                     "do_sample": False, "length_penalty": 2.0, "early_stopping": True}
    greedy = generation_kwargs(1, 2.0, 0, 1, 16)
    assert greedy["num_beams"] == 1 and "length_penalty" not in greedy


class EchoModel:
    """Generates the first three input tokens (after the decoder start token 0): output order is checkable."""

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **settings):
        import torch

        self.batches = getattr(self, "batches", []) + [input_ids.shape]
        return torch.cat([torch.zeros((input_ids.shape[0], 1), dtype=torch.long), input_ids[:, :3]], dim=1)


def test_generate_texts_keeps_input_order(tiny_tokenizer, tiny_splits):
    """Inputs are generated longest first in batches; the texts come back in input order."""
    inputs = [tiny_tokenizer(text)["input_ids"] for text in ["cells grow", "the patients were enrolled in a trial",
                                                             "tumour", "mice were fed a diet"]]
    model = EchoModel()
    texts, generated = evaluate.generate_texts(model, tiny_tokenizer, inputs, generation_kwargs(1, 1.0, 0, 1, 5), 2,
                                               "cpu")
    assert texts == [tiny_tokenizer.decode(ids[:3], skip_special_tokens=True).strip() for ids in inputs]
    assert generated == sum(min(3, len(ids)) for ids in inputs)
    assert [shape[1] for shape in model.batches] == sorted((len(ids) for ids in inputs), reverse=True)[::2]


def test_test_step_keeps_empty_predictions(monkeypatch):
    """evaluation.test scores every test example, an empty output included (the study's code dropped them)."""
    from medsum import evaluation
    from medsum.config import load_run_config
    from medsum.data import Example

    examples = [Example(f"id-{i}", f"source {i}", text) for i, text in
                enumerate(["the cat sat on the mat", "the dog ran", "a b c"])]
    outputs = ["the cat sat on the mat", "", "a b c"]
    monkeypatch.setattr(evaluation, "generate_texts", lambda *args, **kwargs: (outputs, 9))
    setup = types.SimpleNamespace(
        cfg=load_run_config(None, ["generate.num_beams=1"]), splits={"test": examples},
        encoded={"test": [{"input_ids": [5, 1], "labels": [1]}] * 3}, model=None, tokenizer=None,
        accelerator=types.SimpleNamespace(is_main_process=True, process_index=0, num_processes=1, device="cpu",
                                          unwrap_model=lambda model: model), autocast_dtype=None)
    summary, rows, _, generated = evaluation.test(setup, show_progress=False)
    assert [r["id"] for r in rows] == ["id-0", "id-1", "id-2"]
    assert [r["prediction"] for r in rows] == outputs
    assert [r["reference"] for r in rows] == [e.target for e in examples]
    assert rows[1]["rouge1"] == 0.0
    assert summary["rouge1"] == pytest.approx(200 / 3)
    assert (summary["empty_predictions"], summary["examples"], summary["gen_len"]) == (1, 3, 3.0)
