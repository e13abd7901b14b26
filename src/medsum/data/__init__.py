"""Data: read the splits (local JSONL/CSV/Parquet or a hub dataset) into memory-mapped Arrow tables, tokenize them
once in bounded batches (cached on disk, shared by every run of a study), batch and collate.

    records.py     streaming readers with errors naming the file and line; Example
    store.py       prepared Arrow entries on disk: verified, locked while one process builds them
    splits.py      load_splits: the three splits as Split tables (the split rule and caps are documented there)
    tokenizing.py  tokenize: cut-then-tokenize in batches, identical to tokenizing the full text
    batching.py    length-grouped batches and collation
"""

from medsum.data.batching import collate, length_grouped_batches
from medsum.data.records import Example
from medsum.data.splits import SPLITS, Split, load_splits
from medsum.data.tokenizing import Encoded, tokenize, tokenizer_fingerprint

__all__ = ["SPLITS", "Encoded", "Example", "Split", "collate", "length_grouped_batches", "load_splits", "tokenize",
           "tokenizer_fingerprint"]
