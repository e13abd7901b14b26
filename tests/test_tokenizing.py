"""Cut-then-tokenize gives exactly the ids of tokenizing the full text and truncating, for the three tokenizer
kinds of the supported families, built offline on the real sample: T5-style unigram (SentencePiece, Metaspace),
BART-style byte-level BPE, and PEGASUS-style unigram, and the byte-level BPE of medsum's tiny BART."""

from __future__ import annotations

import gzip
import json

import pytest

from medsum.data.tokenizing import CUT_CHARS_PER_TOKEN, cut_at_whitespace, truncated_ids

N_ARTICLES = 60


@pytest.fixture(scope="module")
def corpus(data_dir) -> list[dict]:
    with gzip.open(data_dir / "train.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(N_ARTICLES), handle)]


def _training_texts(corpus):
    return [text for row in corpus[:40] for text in (row["article"][:20000], row["abstract"])]


def t5_style(corpus):
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import T5TokenizerFast

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(_training_texts(corpus), vocab_size=3000, special_tokens=["<pad>", "</s>", "<unk>"],
                                unk_token="<unk>", show_progress=False)
    return T5TokenizerFast(tokenizer_object=unigram._tokenizer, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", extra_ids=0)


def bart_style(corpus):
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_training_texts(corpus), vocab_size=3000, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                            show_progress=False)
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def pegasus_style(corpus):
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import PreTrainedTokenizerFast

    unigram = SentencePieceUnigramTokenizer(replacement="▁", add_prefix_space=True)
    unigram.train_from_iterator(_training_texts(corpus), vocab_size=3000,
                                special_tokens=["<pad>", "</s>", "<mask_1>", "<mask_2>", "<unk>"], unk_token="<unk>",
                                show_progress=False)
    unigram._tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=unigram._tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask_2>")


def medsum_tiny_bart(corpus):
    """The byte-level BPE that medsum's tiny-bart trains (built with tokenizers' parts, not ByteLevelBPETokenizer);
    the tiny unigram tokenizers are t5_style's and pegasus_style's kind."""
    from medsum.models import FAMILIES
    from medsum.tiny_models import train_tokenizer

    return train_tokenizer(_training_texts(corpus), FAMILIES["bart"].tiny, 3000)


# Texts with more characters a token than the cut assumes (a frequent long word, runs of spaces): the cut text
# yields fewer ids than the limit, and the full text must be tokenized instead. Then digits and symbols (a token a
# character or two).
SPARSE = ["expression " * 3000, "gene expression " * 2000]
DENSE = ["7 3 9 1 " * 400, "α=0.05, β=1.2; γ<3 " * 300]


@pytest.fixture(scope="module", params=[t5_style, bart_style, pegasus_style, medsum_tiny_bart],
                ids=lambda build: build.__name__)
def tokenizer(request, corpus):
    return request.param(corpus)


@pytest.mark.parametrize("max_length", [64, 512, 1024])
def test_cut_texts_give_the_full_texts_truncated_ids(corpus, tokenizer, max_length):
    sources = ["summarize: " + row["article"] for row in corpus] + SPARSE + DENSE
    targets = [row["abstract"] for row in corpus] + SPARSE + DENSE
    assert truncated_ids(tokenizer, sources, max_length) == \
        tokenizer(sources, max_length=max_length, truncation=True)["input_ids"]
    assert truncated_ids(tokenizer, targets, max_length // 4, target=True) == \
        tokenizer(text_target=targets, max_length=max_length // 4, truncation=True)["input_ids"]
    cut = [cut_at_whitespace(text, max_length) for text in sources]
    assert sum(c != s for c, s in zip(cut, sources)) >= N_ARTICLES // 2, "the cut must shorten most articles"
    sparse_cut = tokenizer(cut[N_ARTICLES:N_ARTICLES + len(SPARSE)], max_length=max_length, truncation=True)
    assert any(len(ids) < max_length for ids in sparse_cut["input_ids"]), \
        "a sparse text must take the fall-back path (its cut text is short of the limit)"


def test_cut_is_at_a_whitespace_past_the_budget():
    text = "word " * 100
    cut = cut_at_whitespace(text, 10)
    assert len(cut) >= 10 * CUT_CHARS_PER_TOKEN and text.startswith(cut) and text[len(cut)] == " "
    assert cut_at_whitespace("short text", 10) == "short text"
    assert cut_at_whitespace("x" * 500, 10) == "x" * 500  # no whitespace past the budget: the whole text
