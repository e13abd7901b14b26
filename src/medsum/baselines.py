"""Extractive baselines, written as run directories without training: what a trained method must beat.

    lead      the article's first sentences until the word budget is reached
    lexrank   the most central sentences by LexRank (sumy), same budget, in article order
    textrank  the same by TextRank (sumy)
    oracle    greedy sentence selection maximising ROUGE against the reference: the extractive upper bound

Every baseline chooses among the article's sentences as ``medsum.evaluate.split_sentences`` cuts them
(section-heading lines in capitals, such as BACKGROUND, left out) and joins the chosen ones one per line (so
ROUGE-Lsum sees the same sentences). The word budget is the training split's mean reference length in
``medsum.measures.words`` words, rounded (recorded in metrics.json); a summary takes whole sentences until it holds
at least that many words, so its last sentence may cross the budget. sumy gets the project's tokenizers
(``SentenceTokenizer``: split_sentences and measures.words), so it needs no NLTK download. The oracle adds, one at a
time, the sentence that most raises ROUGE-1 + ROUGE-2 F1 (rouge-score's stemmed tokens, n-grams counted within
sentences) and stops when none does (Nallapati et al. 2017; Liu and Lapata 2019).

Each baseline is scored exactly as a trained run (``medsum.evaluate.rouge_per_example`` against the full references,
``medsum.measures``) on the same test rows (the study's data settings) and written with ``medsum.rundir``'s file
names and atomic writers: config.yaml (the data settings), predictions.jsonl, metrics.json
(``rundir.BaselineMetrics``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from medsum import measures, rundir
from medsum.config import DataConfig, EvaluateConfig
from medsum.evaluate import ROUGE_SETTINGS, rouge_tokens, split_sentences
from medsum.evaluation import score_predictions

BASELINES = {
    "lead": "the article's first sentences up to the word budget",
    "lexrank": "LexRank (sumy) sentences up to the word budget",
    "textrank": "TextRank (sumy) sentences up to the word budget",
    "oracle": "greedy ROUGE-1 + ROUGE-2 sentence selection against the reference: the extractive upper bound",
}
RUN_PREFIX = "baseline__"  # a baseline's run directory: runs/baseline__<name>


@dataclass
class BaselineRun:
    """One baseline of a study: its name, its run directory, and the data (and optional metric) settings."""

    name: str
    run_dir: Path
    data: DataConfig
    evaluate: EvaluateConfig


def run_dir_name(name: str) -> str:
    return RUN_PREFIX + name


# ---------------------------------------------------------------------------------------------- choosing sentences


def word_budget(references) -> int:
    """The mean reference length in words (``measures.words``), rounded, at least 1."""
    total = count = 0
    for reference in references:
        total += len(measures.words(reference))
        count += 1
    return max(1, round(total / count)) if count else 1


def _until_budget(sentences: list[str], budget: int) -> list[int]:
    """The first positions of ``sentences`` (in the given order) that together reach ``budget`` words."""
    chosen, total = [], 0
    for index, sentence in enumerate(sentences):
        if total >= budget:
            break
        chosen.append(index)
        total += len(measures.words(sentence))
    return chosen


def lead(sentences: list[str], budget: int) -> list[str]:
    return [sentences[i] for i in _until_budget(sentences, budget)]


class SentenceTokenizer:
    """sumy's tokenizer interface over medsum's own splitters: no NLTK punkt model is needed."""

    language = "english"

    @staticmethod
    def to_sentences(text: str) -> list[str]:
        return split_sentences(text)

    @staticmethod
    def to_words(sentence: str) -> list[str]:
        return measures.words(sentence)


def ranked(sentences: list[str], budget: int, method: str) -> list[str]:
    """The best-rated sentences by sumy's LexRank or TextRank until ``budget`` words, in article order."""
    from sumy.models.dom import ObjectDocumentModel, Paragraph, Sentence

    tokenizer = SentenceTokenizer()
    objects = [Sentence(text, tokenizer) for text in sentences]
    if not objects:
        return []
    document = ObjectDocumentModel([Paragraph(objects)])

    def within_budget(best_first):
        positions = _until_budget([str(info.sentence) for info in best_first], budget)
        return [best_first[i] for i in positions]

    chosen = _sumy_summarizer(method)(document, within_budget)
    return [str(sentence) for sentence in chosen]


def _sumy_summarizer(method: str):
    from sumy.nlp.stemmers import Stemmer
    from sumy.summarizers.lex_rank import LexRankSummarizer
    from sumy.summarizers.text_rank import TextRankSummarizer
    from sumy.utils import get_stop_words

    summarizer = {"lexrank": LexRankSummarizer, "textrank": TextRankSummarizer}[method](Stemmer("english"))
    summarizer.stop_words = get_stop_words("english")
    return summarizer


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _f1(candidate: Counter, reference: Counter) -> float:
    overlap = sum((candidate & reference).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(candidate.values()), overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def oracle(sentences: list[str], reference: str) -> list[str]:
    """Greedy ROUGE-1 + ROUGE-2 F1 selection (module docstring), in article order."""
    target = rouge_tokens(reference)
    references = [_ngram_counts(target, n) for n in (1, 2)]
    grams = [[_ngram_counts(rouge_tokens(s), n) for n in (1, 2)] for s in sentences]
    chosen: list[int] = []
    current, best = [Counter(), Counter()], 0.0
    while True:
        gains = [(sum(_f1(current[k] + grams[i][k], references[k]) for k in (0, 1)), i)
                 for i in range(len(sentences)) if i not in chosen]
        if not gains or max(gains)[0] <= best:
            break
        best, pick = max(gains, key=lambda g: (g[0], -g[1]))
        chosen.append(pick)
        current = [current[k] + grams[pick][k] for k in (0, 1)]
    return [sentences[i] for i in sorted(chosen)]


def article_sentences(article: str) -> list[str]:
    """The article's sentences (``split_sentences``) without its section-heading lines (all capitals, such as
    BACKGROUND): those are no sentences."""
    lines = [line for line in article.splitlines()
             if not (line.strip() == line.strip().upper() and re.search("[A-Z]", line))]
    return split_sentences("\n".join(lines))


def summarize(name: str, article: str, reference: str, budget: int) -> str:
    """The baseline's summary of one article, one sentence per line."""
    sentences = article_sentences(article)
    if name == "lead":
        chosen = lead(sentences, budget)
    elif name == "oracle":
        chosen = oracle(sentences, reference)
    else:
        chosen = ranked(sentences, budget, name)
    return "\n".join(chosen)


# ---------------------------------------------------------------------------------------------- the run directory


def write_baseline(run: BaselineRun, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Builds the baseline's summaries of the test rows and writes its run directory; returns metrics.json."""
    from medsum.data import load_splits

    started = time.perf_counter()
    splits = load_splits(run.data)
    budget = word_budget(example.target for example in splits["train"])
    ids, predictions, references, sources = [], [], [], []
    for example in splits["test"]:
        ids.append(example.id)
        predictions.append(summarize(run.name, example.source, example.target, budget))
        references.append(example.target)
        sources.append(example.source)
    progress(f"{run.name}: {len(ids)} test summaries (word budget {budget})")
    rows, test = score_predictions(ids, predictions, references, sources, run.evaluate)
    about = {"name": run.name, "description": BASELINES[run.name], "word_budget": budget,
             "word_budget_from": f"mean reference length of the {len(splits['train'])} training examples "
                                 f"(measures.words)",
             "uses_budget": run.name != "oracle", "seconds": time.perf_counter() - started}
    metrics = rundir.BaselineMetrics(model="extractive", method=run.name, baseline=about, seed=None,
                              params={"trainable": 0, "total": 0}, test=test, rouge=dict(ROUGE_SETTINGS),
                              versions=_versions())
    rundir.write_config(run.run_dir, {"baseline": run.name, "data": asdict(run.data),
                                      "evaluate": asdict(run.evaluate)})
    rundir.write_predictions(run.run_dir, rows)
    return rundir.write_metrics(run.run_dir, metrics)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("medsum", "rouge-score", "sumy", "textstat", "nltk"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
