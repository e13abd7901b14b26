"""Each measure against values computed by hand on short texts (the arithmetic in the comments)."""

import pytest

from medsum import measures

SOURCE = "The cat sat on the mat. The dog barked loudly at 3 cats."


def test_words_are_lower_cased_alphanumeric_runs_as_rouge_score_tokenizes():
    assert measures.words("The COVID-19 rate, p<0.05.") == ["the", "covid", "19", "rate", "p", "0", "05"]


def test_a_copy_of_the_first_sentence_is_wholly_extractive():
    m = measures.measure("The cat sat on the mat.", SOURCE)
    assert m["words"] == 6 and m["sentences"] == 1
    assert m["compression"] == pytest.approx(13 / 6)  # source: the cat sat on the mat the dog barked loudly at 3 cats
    for n in (1, 2, 3, 4):
        assert m[f"novel_{n}gram_rate"] == 0
    assert m["coverage"] == 1
    assert m["density"] == 6  # one fragment of all 6 words: 6^2 / 6
    assert m["repeated_trigram_rate"] == 0


def test_novel_ngram_rates_count_occurrences():
    # summary: the cat barked loudly (4 words); source has every word
    summary, source = measures.words("The cat barked loudly."), measures.words(SOURCE)
    assert measures.novel_ngram_rate(summary, source, 1) == 0
    # bigrams: (the cat) in source, (cat barked) novel, (barked loudly) in source -> 1/3
    assert measures.novel_ngram_rate(summary, source, 2) == pytest.approx(1 / 3)
    # trigrams: (the cat barked), (cat barked loudly): both novel -> 2/2
    assert measures.novel_ngram_rate(summary, source, 3) == 1
    # one 4-gram, novel -> 1/1; no 5-gram -> undefined
    assert measures.novel_ngram_rate(summary, source, 4) == 1
    assert measures.novel_ngram_rate(summary, source, 5) is None


def test_fragments_are_greedy_longest_shared_runs():
    summary = measures.words("the dog sat on the mat today")
    source = measures.words("the cat sat on the mat. the dog barked")
    # source positions: the0 cat1 sat2 on3 the4 mat5 the6 dog7 barked8
    # at "the": runs from the0 and the4 are 1 word long, from the6 "the dog" is 2 -> [the, dog]
    # then "sat on the mat" (4), then "today" (none)
    assert measures.fragments(summary, source) == [["the", "dog"], ["sat", "on", "the", "mat"]]
    coverage, density = measures.coverage_and_density(summary, source)
    assert coverage == pytest.approx(6 / 7)  # (2 + 4) / 7
    assert density == pytest.approx(20 / 7)  # (2^2 + 4^2) / 7


def test_repeated_trigram_rate():
    # trigrams: (a b c) (b c a) (c a b) (a b c): the last repeats the first -> 1/4
    assert measures.repeated_trigram_rate(["a", "b", "c", "a", "b", "c"]) == pytest.approx(1 / 4)
    assert measures.repeated_trigram_rate(["a", "b"]) is None


def test_unsupported_numbers_are_numbers_absent_from_the_source():
    assert measures.numbers("p<0.05, 3.5mg of IL-2 in covid19") == ["0.05", "3.5", "2"]
    # summary numbers 3, 4, 3.0: "3" is in the source, "4" and "3.0" (a different string) are not
    m = measures.measure("Of 3 cats, 4 ate 3.0 g.", SOURCE)
    assert (m["numbers"], m["unsupported_numbers"]) == (3, 2)
    assert m["unsupported_number_rate"] == pytest.approx(2 / 3)


def test_readability_by_the_published_formulas_on_textstats_counts():
    m = measures.measure("The cat sat. A dog ran away.", SOURCE)
    # 7 words, 2 sentences, syllables (CMU dictionary) 1+1+1+1+1+1+2 (a-way) = 8, letters 3+3+3+1+3+3+4 = 20
    # FKGL = 0.39 * 7/2 + 11.8 * 8/7 - 15.59 = 1.365 + 13.485714 - 15.59 = -0.739286
    assert m["flesch_kincaid_grade"] == pytest.approx(-0.739286, abs=1e-6)
    # L = 20 / 7 * 100 = 285.714, S = 2 / 7 * 100 = 28.571; CLI = 0.058 L - 0.296 S - 15.8 = -7.685714
    assert m["coleman_liau"] == pytest.approx(-7.685714, abs=1e-6)


def test_readability_syllables_come_from_the_cmu_dictionary_then_pyphen():
    m = measures.measure("Every patient recovered. Fibrosarcoma was rare in mice.", SOURCE)
    # 8 words, 2 sentences; syllables ev-e-ry 3 (CMU's first pronunciation), pa-tient 2, re-cov-ered 3,
    # fibrosarcoma 4 (not in CMU: Pyphen's 3 hyphenation points + 1), was, rare, in, mice 1 each = 16
    # FKGL = 0.39 * 8/2 + 11.8 * 16/8 - 15.59 = 1.56 + 23.6 - 15.59 = 9.57
    assert m["flesch_kincaid_grade"] == pytest.approx(9.57, abs=1e-9)
    # letters 5+7+9+12+3+4+2+4 = 46: L = 575, S = 25; CLI = 0.058 * 575 - 0.296 * 25 - 15.8 = 10.15
    assert m["coleman_liau"] == pytest.approx(10.15, abs=1e-9)


def test_readability_runs_without_network_access(tmp_path):
    """textstat 0.7.10+ download NLTK's cmudict at run time; the pinned release must not need the network."""
    import subprocess
    import sys

    code = ("import socket\n"
            "def refuse(*args, **kwargs):\n    raise OSError('network disabled by the test')\n"
            "socket.socket.connect = refuse\nsocket.create_connection = refuse\n"
            f"import nltk\nnltk.data.path[:] = [{str(tmp_path)!r}]\n"
            "from medsum import measures\n"
            "print(measures.measure('Every patient recovered. Fibrosarcoma was rare.', 'x')['flesch_kincaid_grade'])")
    # and an empty NLTK data path: a corpus downloaded earlier cannot stand in for the dictionary either
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip()) > 0


def test_an_empty_summary_gives_zero_counts_and_undefined_ratios():
    m = measures.measure("", SOURCE)
    assert set(m) == set(measures.MEASURES)
    assert {k: m[k] for k in ("words", "sentences", "numbers", "unsupported_numbers")} == {
        "words": 0, "sentences": 0, "numbers": 0, "unsupported_numbers": 0}
    assert all(m[k] is None for k in measures.MEASURES if k not in ("words", "sentences", "numbers",
                                                                     "unsupported_numbers"))
    assert measures.measure("  ...  ", SOURCE)["sentences"] == 0  # punctuation alone has no words


def test_means_skip_undefined_values():
    rows = [measures.measure("The cat sat on the mat.", SOURCE), measures.measure("", SOURCE)]
    means = measures.means(rows)
    assert means["words"] == 3  # (6 + 0) / 2
    assert means["coverage"] == 1  # the empty summary's None is left out
    assert means["unsupported_number_rate"] is None  # no summary holds a number
    assert measures.means([]) == {name: None for name in measures.MEASURES}


def _newsroom_fragments(summary, source):
    """Grusky et al. (2018), Algorithm 1, transcribed: every source position scanned, no index."""
    found, i, j = [], 0, 0
    while i < len(summary):
        best = []
        while j < len(source):
            if summary[i] == source[j]:
                i2, j2 = i, j
                while i2 < len(summary) and j2 < len(source) and summary[i2] == source[j2]:
                    i2, j2 = i2 + 1, j2 + 1
                if len(best) < i2 - i:
                    best = summary[i:i2]
                j = j2
            else:
                j += 1
        i, j = i + max(len(best), 1), 0
        if best:
            found.append(best)
    return found


def test_fragments_match_the_newsroom_reference_loop_on_random_texts():
    import random

    rng = random.Random(0)
    for _ in range(300):
        source = [rng.choice("abcd") for _ in range(rng.randint(0, 30))]
        summary = [rng.choice("abcde") for _ in range(rng.randint(0, 15))]
        assert measures.fragments(summary, source) == _newsroom_fragments(summary, source)
