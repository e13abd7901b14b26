"""Tokenizing a split once, in batches, into a prepared Arrow table that every run and seed of a study reuses.

A fast tokenizer keeps a whole article's tokens (~6,000 for a PubMed article, with offsets) before truncating to
the limit, so one call over 4,000 articles took 4.4 GiB and 40 s. Each text is therefore cut first, at the first
whitespace past ``CUT_CHARS_PER_TOKEN`` characters per allowed token. The tokenizers medsum supports split words at
whitespace before subword tokenization, so the cut text's tokens are the full text's first tokens; when the cut
text yields the full ``max_length`` ids, they are exactly the full text's truncated ids. When it yields fewer (a
text denser in tokens than the cut assumed), that text is tokenized whole instead. tests/test_data.py proves the
equality for T5-style unigram, BART-style byte-level BPE and PEGASUS-style unigram tokenizers on the real sample.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medsum.data import store
from medsum.data.records import Example

CUT_CHARS_PER_TOKEN = 6  # English subword tokenizers average 4-5 characters a token on PubMed text
TOKENIZE_BATCH_ROWS = 1000  # the working set: about 1,000 cut texts and their ids
TOKENIZED_FORMAT = "tokenized-v3"  # bump when the layout or the tokenization rule changes
_WHITESPACE = re.compile(r"\s")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what maps text to ids (vocabulary, normaliser, pre-tokenizer, post-processor), leaving out the
    truncation and padding state that each call to the tokenizer changes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tokenizer.get_vocab().items()))
    else:
        # Serialised with truncation and padding switched off for the moment (then restored): hashing the
        # serialisation directly costs a few ms where parsing and re-dumping it cost ~40 ms at a 32k vocabulary.
        truncation, padding = backend.truncation, backend.padding
        backend.no_truncation()
        backend.no_padding()
        try:
            text = backend.to_str()
        finally:
            if truncation is not None:
                backend.enable_truncation(**truncation)
            if padding is not None:
                backend.enable_padding(**padding)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cut_at_whitespace(text: str, max_tokens: int) -> str:
    """The text up to the first whitespace past ``CUT_CHARS_PER_TOKEN * max_tokens`` characters (whole if shorter)."""
    at = CUT_CHARS_PER_TOKEN * max_tokens
    if len(text) <= at:
        return text
    found = _WHITESPACE.search(text, at)
    return text[: found.start()] if found else text


def truncated_ids(tokenizer, texts: list[str], max_length: int, target: bool = False) -> list[list[int]]:
    """``tokenizer(texts, max_length=max_length, truncation=True)["input_ids"]``, computed on cut texts."""
    cut = [cut_at_whitespace(text, max_length) for text in texts]

    def call(batch: list[str]) -> list[list[int]]:
        if target:
            return tokenizer(text_target=batch, max_length=max_length, truncation=True)["input_ids"]
        return tokenizer(batch, max_length=max_length, truncation=True)["input_ids"]

    ids = call(cut)
    redo = [i for i, (row, short, full) in enumerate(zip(ids, cut, texts)) if len(row) < max_length and short != full]
    if redo:
        for i, row in zip(redo, call([texts[i] for i in redo])):
            ids[i] = row
    return ids


class Encoded(Sequence):
    """A split's token ids over an Arrow table: ``[i]`` is ``{"input_ids", "labels"}`` (a slice gives a list);
    ``lengths()`` gives source plus target length per row from a column (for length-grouped batches)."""

    def __init__(self, table):
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        row = self.table[position]
        return {"input_ids": row["input_ids"], "labels": row["labels"]}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        for batch in self.table.iter(batch_size=TOKENIZE_BATCH_ROWS):
            for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
                yield {"input_ids": input_ids, "labels": labels}

    def lengths(self) -> list[int]:
        return self.table.data.column("length").to_pylist()


def _example_batches(examples: Sequence[Example], size: int) -> Iterator[list[Example]]:
    if hasattr(examples, "batches"):
        yield from examples.batches(size)
        return
    for start in range(0, len(examples), size):
        yield list(examples[start:start + size])


def content_fingerprint(examples: Sequence[Example]) -> str:
    """The examples' own fingerprint (a prepared Split has one), else a hash of their texts."""
    known = getattr(examples, "fingerprint", None)
    if known:
        return known
    digest = hashlib.sha256()
    for example in examples:
        for text in (example.id, example.source, example.target):
            digest.update(text.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()[:32]


def _tokenized_batches(examples, tokenizer, prefix: str, max_source: int, max_target: int,
                       bar) -> Iterator[Any]:
    import pyarrow as pa

    for batch in _example_batches(examples, TOKENIZE_BATCH_ROWS):
        sources = truncated_ids(tokenizer, [prefix + e.source for e in batch], max_source)
        targets = truncated_ids(tokenizer, [e.target for e in batch], max_target, target=True)
        lengths = [len(s) + len(t) for s, t in zip(sources, targets)]
        yield pa.RecordBatch.from_pydict({"input_ids": sources, "labels": targets, "length": lengths},
                                         schema=_schema())
        bar.update(len(batch))


def _schema():
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())), ("length", pa.int32())])


def tokenize(examples: Sequence[Example], tokenizer, prefix: str, max_source_tokens: int, max_target_tokens: int,
             cache: Path | None = None, show_progress: bool = False, what: str = "examples") -> Encoded:
    """The examples' ``input_ids`` and ``labels`` (each truncated, with the tokenizer's special tokens), prepared
    once into ``cache`` per (tokenizer, texts, prefix, lengths) and memory-mapped on reuse; in memory without one."""
    args = (tokenizer, prefix, max_source_tokens, max_target_tokens)

    def build(bar):
        return _tokenized_batches(examples, *args, bar)

    if cache is None:
        import datasets
        import pyarrow as pa

        with store.progress_bar(len(examples), f"tokenizing {what}", show_progress) as bar:
            return Encoded(datasets.Dataset(pa.Table.from_batches(list(build(bar)), schema=_schema())))
    key = hashlib.sha256(json.dumps([tokenizer_fingerprint(tokenizer), content_fingerprint(examples), prefix,
                                     max_source_tokens, max_target_tokens, TOKENIZED_FORMAT]).encode()).hexdigest()

    def write(out: Path) -> dict[str, Any]:
        with store.progress_bar(len(examples), f"tokenizing {what}", show_progress) as bar:
            return {"rows": store.write_batches(out, _schema(), build(bar))}

    entry, _ = store.open_or_build(cache / key[:24], write, f"the tokenized {what}")
    return Encoded(store.open_dataset(entry))
