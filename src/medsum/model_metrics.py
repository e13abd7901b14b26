"""Optional model-based metrics of test summaries, each from a local model directory (``evaluate.*`` settings):
nothing is downloaded, and a metric whose setting is unset is skipped (the row and metrics.json then lack it).

- BERTScore (``bert-score``): precision, recall and F1 of each summary against its reference, from the last layer
  of the model in ``evaluate.bertscore_model`` (no idf weighting, no baseline rescaling: the raw cosine scores).
- NLI faithfulness, SummaC zero-shot style (Laban et al. 2022): each summary sentence's highest entailment
  probability over the source sentences (premise: a source sentence, hypothesis: the summary sentence), averaged
  over the summary's sentences, with the sequence classifier in ``evaluate.nli_model`` (its config's id2label must
  name an entailment label). Sentences are ``medsum.evaluate.split_sentences``; the model's tokenizer truncates
  each pair to what its positions allow.

Tokenization: each model's own tokenizer. An empty summary gets None (its emptiness is counted by the ROUGE
summary's empty_predictions). Rows carry the values under "model_metrics"; metrics.json's test["model_metrics"]
holds their means over the rows where they are defined and the model directories used.
"""

from __future__ import annotations

from pathlib import Path

from medsum.errors import MedsumError
from medsum.evaluate import split_sentences

BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
NLI_KEY = "nli_faithfulness"
BATCH_SIZE = 32


def add_model_metrics(rows: list[dict], test: dict, sources: list[str], settings) -> tuple[list[dict], dict]:
    """Rows and test summary with "model_metrics" added for each configured metric; unchanged when none is."""
    columns: dict[str, list[float | None]] = {}
    predictions = [row["prediction"] for row in rows]
    if settings.bertscore_model:
        columns.update(bertscore(predictions, [row["reference"] for row in rows],
                                 model_dir(settings.bertscore_model, "evaluate.bertscore_model")))
    if settings.nli_model:
        columns[NLI_KEY] = nli_faithfulness(predictions, sources, model_dir(settings.nli_model, "evaluate.nli_model"))
    if not columns:
        return rows, test
    rows = [{**row, "model_metrics": {key: values[i] for key, values in columns.items()}}
            for i, row in enumerate(rows)]
    means = {key: _mean(values) for key, values in columns.items()}
    models = {"bertscore_model": settings.bertscore_model, "nli_model": settings.nli_model}
    return rows, {**test, "model_metrics": {**means, **{k: str(v) for k, v in models.items() if v}}}


def model_dir(path: str, key: str) -> str:
    """The local directory a metric setting names; anything else is an error naming the setting."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise MedsumError(f"{key}: no directory {path} (a local model directory; nothing is downloaded)")
    return str(folder)


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bertscore(predictions: list[str], references: list[str], folder: str) -> dict[str, list[float | None]]:
    """BERTScore P, R, F1 per example (None for an empty prediction), from the model in ``folder``."""
    from bert_score import BERTScorer
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    scorer = BERTScorer(model_type=folder, num_layers=layers, device=_device(), use_fast_tokenizer=True)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:  # a locally trained tokenizer may not know its model's limit
        scorer._tokenizer.model_max_length = min(scorer._tokenizer.model_max_length, positions)
    kept = [i for i, p in enumerate(predictions) if p.strip()]
    out: dict[str, list[float | None]] = {key: [None] * len(predictions) for key in BERTSCORE_KEYS}
    if kept:
        scores = scorer.score([predictions[i] for i in kept], [references[i] for i in kept], batch_size=BATCH_SIZE)
        for key, values in zip(BERTSCORE_KEYS, scores):
            for i, value in zip(kept, values.tolist()):
                out[key][i] = float(value)
    return out


def nli_faithfulness(predictions: list[str], sources: list[str], folder: str) -> list[float | None]:
    """SummaC zero-shot score per example (module docstring); None for a summary without sentences."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).to(_device()).eval()
    entail = entailment_index(model.config.id2label, folder)
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 512)
    out: list[float | None] = []
    for prediction, source in zip(predictions, sources):
        claims, premises = split_sentences(prediction), split_sentences(source) or [""]
        if not claims:
            out.append(None)
            continue
        pairs = [(premise, claim) for claim in claims for premise in premises]
        probabilities = []
        with torch.no_grad():
            for start in range(0, len(pairs), BATCH_SIZE):
                batch = pairs[start:start + BATCH_SIZE]
                encoded = tokenizer([p for p, _ in batch], [c for _, c in batch], truncation=True, padding=True,
                                    max_length=limit, return_tensors="pt").to(model.device)
                probabilities += model(**encoded).logits.softmax(-1)[:, entail].tolist()
        best = [max(probabilities[k * len(premises):(k + 1) * len(premises)]) for k in range(len(claims))]
        out.append(sum(best) / len(best))
    return out


def entailment_index(id2label: dict, folder: str) -> int:
    found = [int(i) for i, label in id2label.items() if str(label).lower().startswith("entail")]
    if not found:
        raise MedsumError(f"evaluate.nli_model: {folder} has no entailment label (its labels: "
                          f"{', '.join(map(str, id2label.values()))})")
    return found[0]
