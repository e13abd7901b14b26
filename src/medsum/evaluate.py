"""Evaluation: generate summaries in length-sorted batches and score them with ROUGE the way the reference
implementation does.

ROUGE rules (PITFALLS.md): ``rouge-score`` with stemming; the reference is always the full reference text
from the data (never decoded, truncated labels); an empty prediction is kept and scores 0; ``rougeL`` is
sentence-level and ``rougeLsum`` summary-level, computed on texts split one sentence per line by
``split_sentences`` (recorded as ``SENTENCE_SPLITTER``). Scores are F1 x 100.
"""

from __future__ import annotations

import functools
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Any

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")  # the metric names of metrics.json, everywhere
ROUGE_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}  # in reports
SENTENCE_SPLITTER = "regex: newline, or [.!?] followed by whitespace"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
PARALLEL_MIN_EXAMPLES = 64  # below this a process pool costs more than it saves


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


_scorers: dict[str, Any] = {}


class _MemoizedPorterStemmer:
    """NLTK's Porter stemmer (the one rouge-score uses) with its results remembered: stemming is a pure function
    of the word, and a summary's words repeat across references, predictions and the two scorers."""

    def __init__(self):
        from nltk.stem import porter

        self.stem = functools.lru_cache(maxsize=1 << 17)(porter.PorterStemmer().stem)


@functools.cache
def _rouge_tokenizer():
    """rouge-score's default tokenizer (its own ``tokenize.tokenize``) over the memoized stemmer: the same tokens,
    about 20% less scoring time (tests/test_evaluate.py compares with the stock scorer)."""
    from rouge_score import tokenize, tokenizers

    class StemMemoTokenizer(tokenizers.Tokenizer):
        def __init__(self):
            self._stemmer = _MemoizedPorterStemmer()

        def tokenize(self, text):
            return tokenize.tokenize(text, self._stemmer)

    return StemMemoTokenizer()


def _scorer(kind: str):
    if kind not in _scorers:
        from rouge_score import rouge_scorer

        keys = ["rouge1", "rouge2", "rougeL"] if kind == "plain" else ["rougeLsum"]
        _scorers[kind] = rouge_scorer.RougeScorer(keys, use_stemmer=True, tokenizer=_rouge_tokenizer())
    return _scorers[kind]


def score_example(pair: tuple[str, str]) -> dict[str, float]:
    """ROUGE F1 x 100 of one (reference, prediction) pair; reference first (swapping swaps precision and recall)."""
    reference, prediction = pair
    plain = _scorer("plain").score(reference, prediction)
    summary_level = _scorer("lsum").score("\n".join(split_sentences(reference)),
                                          "\n".join(split_sentences(prediction)))
    scores = {key: 100.0 * plain[key].fmeasure for key in ("rouge1", "rouge2", "rougeL")}
    scores["rougeLsum"] = 100.0 * summary_level["rougeLsum"].fmeasure
    return scores


def rouge_per_example(references: list[str], predictions: list[str], workers: int | None = None) -> list[dict]:
    """Per-example ROUGE, on all cores for large inputs; identical to scoring one by one (same scorer, same order)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    pairs = list(zip(references, predictions))
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers <= 1 or len(pairs) < PARALLEL_MIN_EXAMPLES:
        return [score_example(pair) for pair in pairs]
    chunk = max(1, math.ceil(len(pairs) / (workers * 4)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(score_example, pairs, chunksize=chunk))


def aggregate(per_example: list[dict]) -> dict[str, float]:
    """Means of the per-example scores (the numbers metrics.json reports)."""
    if not per_example:
        return {key: 0.0 for key in ROUGE_KEYS}
    return {key: sum(row[key] for row in per_example) / len(per_example) for key in ROUGE_KEYS}


def generation_kwargs(num_beams: int, length_penalty: float, no_repeat_ngram_size: int, min_new_tokens: int,
                      max_new_tokens: int) -> dict[str, Any]:
    kwargs = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
              "no_repeat_ngram_size": no_repeat_ngram_size, "do_sample": False}
    if num_beams > 1:
        kwargs["length_penalty"] = length_penalty
        kwargs["early_stopping"] = True
    return kwargs


def _beam_search_cache(model, num_beams: int):
    """A cache for encoder-decoder beam search that does not reorder the cross-attention keys and values.

    Beam search reorders the cache after every token so that each beam carries its parent's history. The
    cross-attention entries are the encoder's keys and values, identical for every beam of an input, and a beam's
    parent is always a beam of the same input, so reordering them (the default) copies every layer's encoder states
    once per generated token for no change. Skipping it gives the same texts and cuts 4-beam test generation by
    about 40% on CPU (docs/performance.md). Returns None (let generate build its default) where it does not apply:
    greedy search, and families whose identical beams the tests have not proven (``skip_cross_attention_reorder``).
    """
    from medsum.models import FAMILIES

    if num_beams <= 1:
        return None
    family = FAMILIES.get(getattr(model.config, "model_type", ""))
    if family is None or not family.skip_cross_attention_reorder:
        return None
    from transformers import DynamicCache

    config = model.config.get_text_config(decoder=True)
    return _self_attention_reordered_cache_class()(DynamicCache(config=config), DynamicCache(config=config))


@functools.cache
def _generate_cache_argument() -> str:
    """The name ``generate`` takes a cache under: ``cache`` in recent transformers 5 releases, ``past_key_values``
    before (the first of the names its beam search reorders)."""
    from transformers.generation import utils

    return getattr(utils, "ALL_CACHE_NAMES", ["past_key_values"])[0]


@functools.cache
def _self_attention_reordered_cache_class():
    from transformers import EncoderDecoderCache

    class SelfAttentionReorderedCache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx):
            self.self_attention_cache.reorder_cache(beam_idx)

    return SelfAttentionReorderedCache


def generate_texts(model, tokenizer, input_ids: list[list[int]], settings: dict[str, Any], batch_size: int,
                   device, autocast_dtype=None, progress=None, done: dict[int, tuple[str, int]] | None = None,
                   on_batch=None) -> tuple[list[str], int]:
    """Summaries for pre-tokenized inputs, in input order, plus the number of generated (non-pad) tokens.

    Inputs are generated longest first in fixed batches of similar length, so little compute goes to padding. A
    batch whose every input is in ``done`` ({index: (text, generated tokens)}, from an interrupted pass) is taken
    from there instead; ``on_batch(indices, texts, token_counts)`` is told each batch generated.
    """
    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    texts: list[str] = [""] * len(input_ids)
    generated_tokens = 0
    done = done or {}
    model.eval()
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        if all(i in done for i in indices):
            batch_texts, counts = [done[i][0] for i in indices], [done[i][1] for i in indices]
        else:
            batch_texts, counts = _generate_batch(model, tokenizer, [input_ids[i] for i in indices], settings, device,
                                                  autocast_dtype)
            if on_batch is not None:
                on_batch(indices, batch_texts, counts)
        for index, text, count in zip(indices, batch_texts, counts):
            texts[index] = text
            generated_tokens += count
        if progress is not None:
            progress(len(indices))
    return texts, generated_tokens


def _generate_batch(model, tokenizer, rows: list[list[int]], settings: dict[str, Any], device,
                    autocast_dtype) -> tuple[list[str], list[int]]:
    """The texts of one batch and each one's number of generated (non-pad) tokens."""
    import torch

    from medsum.data import collate

    pad_id = tokenizer.pad_token_id
    special = set(tokenizer.all_special_ids)
    batch = collate([{"input_ids": row} for row in rows], pad_id, with_labels=False)
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype,
                                         enabled=autocast_dtype is not None):
        cache = _beam_search_cache(model, settings.get("num_beams", 1))
        extra = {_generate_cache_argument(): cache} if cache is not None else {}
        output = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra,
                                **settings)
    texts, counts = [], []
    for row in output.cpu():
        tokens = [t for t in row.tolist()[1:] if t != pad_id]  # drop the decoder start token
        counts.append(len(tokens))
        texts.append(tokenizer.decode([t for t in tokens if t not in special], skip_special_tokens=True).strip())
    return texts, counts
