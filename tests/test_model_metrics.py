"""The optional model-based metrics (``medsum.model_metrics``): these tests check the MACHINERY ONLY. The models are
tiny, randomly initialised BERTs with a WordPiece tokenizer trained here on a few sentences (built offline in
seconds), so their scores mean nothing; what is checked is that the metrics load local directories without any
download, compute what their definitions say (BERTScore 1 for a copy of the reference; SummaC zero-shot as the mean
over summary sentences of the best entailment probability, recomputed pair by pair), are stored in rows and
metrics.json, and that a missing directory or a model without an entailment label is one error naming the setting."""

from __future__ import annotations

import pytest

from medsum import model_metrics
from medsum.config import EvaluateConfig, config_from_dict
from medsum.errors import MedsumError

TEXTS = ["The cat sat on the mat.", "A dog barked at the cat.", "Patients received aspirin daily.",
         "The trial enrolled forty adults.", "Fever fell in most patients.", "Side effects were mild and rare."]
SOURCE = " ".join(TEXTS)


def _tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("metric-models")
    torch.manual_seed(0)
    folders = {}
    for kind in ("encoder", "nli", "no_entailment"):
        folder = root / kind
        tokenizer = _tokenizer(folder)
        labels = {"nli": ["entailment", "neutral", "contradiction"], "no_entailment": ["positive", "negative"]}
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
        if kind == "encoder":
            BertModel(config).save_pretrained(folder)
        else:
            config.id2label = dict(enumerate(labels[kind]))
            config.label2id = {v: k for k, v in config.id2label.items()}
            BertForSequenceClassification(config).save_pretrained(folder)
        folders[kind] = str(folder)
    return folders


def test_bertscore_of_a_copy_is_one_and_an_empty_prediction_has_none(tiny_models):
    references = [TEXTS[0], TEXTS[2]]
    scores = model_metrics.bertscore([TEXTS[0], "", ], [references[0], references[1]], tiny_models["encoder"])
    assert scores["bertscore_f1"][0] == pytest.approx(1.0, abs=1e-5)  # identical tokens match themselves
    assert scores["bertscore_precision"][0] == pytest.approx(1.0, abs=1e-5)
    assert all(scores[key][1] is None for key in model_metrics.BERTSCORE_KEYS)
    other = model_metrics.bertscore([TEXTS[1]], [TEXTS[4]], tiny_models["encoder"])["bertscore_f1"][0]
    assert other < 1.0


def test_nli_faithfulness_is_the_mean_best_entailment_over_source_sentences(tiny_models):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    summary = "Patients received aspirin daily. Fever fell."
    got = model_metrics.nli_faithfulness([summary, ""], [SOURCE, SOURCE], tiny_models["nli"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["nli"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["nli"]).eval()
    best = []
    for claim in ("Patients received aspirin daily.", "Fever fell."):
        with torch.no_grad():
            probs = [model(**tokenizer(premise, claim, return_tensors="pt")).logits.softmax(-1)[0, 0].item()
                     for premise in TEXTS]  # label 0 is entailment
        best.append(max(probs))
    assert got[0] == pytest.approx(sum(best) / 2, abs=1e-5)
    assert got[1] is None  # no summary sentence


def test_rows_and_metrics_json_carry_the_configured_metrics_only(tiny_models):
    rows = [{"id": "a", "prediction": TEXTS[0], "reference": TEXTS[0]},
            {"id": "b", "prediction": "", "reference": TEXTS[1]}]
    same_rows, same_test = model_metrics.add_model_metrics(rows, {"rouge1": 1.0}, [SOURCE] * 2, EvaluateConfig())
    assert same_rows == rows and same_test == {"rouge1": 1.0}  # nothing configured: skipped
    settings = EvaluateConfig(bertscore_model=tiny_models["encoder"], nli_model=tiny_models["nli"])
    new_rows, test = model_metrics.add_model_metrics(rows, {"rouge1": 1.0}, [SOURCE] * 2, settings)
    assert set(new_rows[0]["model_metrics"]) == {*model_metrics.BERTSCORE_KEYS, "nli_faithfulness"}
    assert new_rows[1]["model_metrics"]["bertscore_f1"] is None
    # means over the rows where a metric is defined: here the first row only
    assert test["model_metrics"]["bertscore_f1"] == new_rows[0]["model_metrics"]["bertscore_f1"]
    assert test["model_metrics"]["nli_model"] == tiny_models["nli"] and test["rouge1"] == 1.0


def test_a_missing_directory_or_a_model_without_entailment_is_an_error_naming_the_setting(tiny_models, tmp_path):
    with pytest.raises(MedsumError, match="evaluate.bertscore_model: no directory"):
        config_from_dict({"evaluate": {"bertscore_model": str(tmp_path / "nothing")}})
    with pytest.raises(MedsumError, match="evaluate.nli_model: no directory"):
        model_metrics.model_dir(str(tmp_path / "nothing"), "evaluate.nli_model")
    with pytest.raises(MedsumError, match="evaluate.nli_model: .* has no entailment label .*positive, negative"):
        model_metrics.nli_faithfulness(["A cat."], [SOURCE], tiny_models["no_entailment"])


def test_medsum_evaluate_adds_them_to_a_finished_run(tiny_models, tiny_runs, tmp_path):
    import json
    import shutil

    from conftest import read_jsonl
    from medsum.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    before = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--bertscore-model", tiny_models["encoder"],
                 "--nli-model", tiny_models["nli"]]) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert {k: after["test"][k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "measures")} == {
        k: before["test"][k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "measures")}
    assert after["test"]["model_metrics"]["bertscore_model"] == tiny_models["encoder"]
    rows = read_jsonl(run / "predictions.jsonl")
    assert all("nli_faithfulness" in row["model_metrics"] for row in rows)
    assert main(["evaluate", str(run), "--nli-model", str(tmp_path / "none")]) == 2  # one error line, no traceback
