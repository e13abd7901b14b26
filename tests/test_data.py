"""Data: reading the splits (directory, single JSONL/CSV/Parquet split by the documented seeded rule), caps, errors
that name file and line, the tokenize cache, length-grouped batches and collation."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import read_jsonl
from medsum.config import DataConfig, load_run_config
from medsum.data import collate, length_grouped_batches, load_splits, tokenize
from medsum.errors import MedsumError

N_ROWS = 40


@pytest.fixture(scope="module")
def rows(data_dir) -> list[dict]:
    """The first 40 validation rows of the real data, articles shortened (small files, fast tests)."""
    with gzip.open(data_dir / "validation.jsonl.gz", "rt", encoding="utf-8") as handle:
        out = []
        for line in handle:
            record = json.loads(line)
            out.append(dict(record, article=record["article"][:2000]))
            if len(out) == N_ROWS:
                return out
    raise AssertionError("the sample has fewer than 40 validation rows")


@pytest.fixture(scope="module")
def single_files(tmp_path_factory, rows) -> dict[str, Path]:
    """The same 40 rows as JSONL, CSV and Parquet."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("single")
    jsonl = folder / "all.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_csv(folder / "all.csv", index=False)
    pd.DataFrame(rows).to_parquet(folder / "all.parquet", index=False)
    return {"jsonl": jsonl, "csv": folder / "all.csv", "parquet": folder / "all.parquet"}


def expected_split(n: int, split_seed: int) -> dict[str, list[int]]:
    """The documented rule (data.py): shuffle with random.Random(split_seed), cut 80/10/10, keep file order."""
    order = list(range(n))
    random.Random(split_seed).shuffle(order)
    n_val, n_test = max(1, round(n * 0.1)), max(1, round(n * 0.1))
    n_train = n - n_val - n_test
    parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {split: sorted(idx) for split, idx in parts.items()}


def ids(splits) -> dict[str, list[str]]:
    return {split: [e.id for e in examples] for split, examples in splits.items()}


# ---------------------------------------------------------------------------------------------- reading


def test_directory_of_splits_is_read_in_file_order(data_dir, test_rows):
    splits = load_splits(DataConfig(path=str(data_dir), max_train_examples=5, max_eval_examples=4))
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [5, 4, 4]
    first_test = test_rows[:4]
    assert [e.id for e in splits["test"]] == [r["id"] for r in first_test]
    assert [e.target for e in splits["test"]] == [r["abstract"] for r in first_test]
    assert [e.source for e in splits["test"]] == [r["article"] for r in first_test]
    validation = read_jsonl(data_dir / "validation.jsonl.gz")[:4]
    assert [e.id for e in splits["validation"]] == [r["id"] for r in validation]


def test_no_cap_reads_every_row(data_dir):
    splits = load_splits(DataConfig(path=str(data_dir), max_train_examples=3))
    assert (len(splits["validation"]), len(splits["test"])) == (200, 200)


def test_caps_stop_reading_a_split_file(tmp_path, rows):
    """A capped split is read only up to its cap: a study's later runs do not parse a large file to use 8 rows of
    it (a damaged line past the cap is then never reached)."""
    lines = [json.dumps(r) for r in rows[:6]]
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines[:4] + ["not json"] + lines[4:]) + "\n")
    splits = load_splits(DataConfig(path=str(tmp_path), max_train_examples=4, max_eval_examples=3))
    assert ids(splits) == {"train": [r["id"] for r in rows[:4]], "validation": [r["id"] for r in rows[:3]],
                           "test": [r["id"] for r in rows[:3]]}
    with pytest.raises(MedsumError, match=r"train\.jsonl line 5"):
        load_splits(DataConfig(path=str(tmp_path), max_train_examples=5, max_eval_examples=3))


def test_eval_cap_does_not_depend_on_the_run_seed(data_dir):
    a = load_run_config(None, [f"data.path={data_dir}", "data.max_eval_examples=6", "seed=1"])
    b = load_run_config(None, [f"data.path={data_dir}", "data.max_eval_examples=6", "seed=99"])
    assert ids(load_splits(a.data))["test"] == ids(load_splits(b.data))["test"]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_single_file_is_split_by_the_documented_rule(single_files, rows, kind):
    splits = load_splits(DataConfig(path=str(single_files[kind])))
    want = expected_split(N_ROWS, 0)
    assert {s: len(v) for s, v in want.items()} == {"train": 32, "validation": 4, "test": 4}
    for split, indices in want.items():
        assert [e.id for e in splits[split]] == [rows[i]["id"] for i in indices]
        assert [e.target for e in splits[split]] == [rows[i]["abstract"] for i in indices]


def test_single_file_split_follows_split_seed_only(single_files, rows):
    path = str(single_files["jsonl"])
    first = ids(load_splits(DataConfig(path=path, split_seed=0)))
    assert ids(load_splits(DataConfig(path=path, split_seed=0))) == first  # deterministic
    other = ids(load_splits(DataConfig(path=path, split_seed=7)))
    assert other != first
    assert other["test"] == [rows[i]["id"] for i in expected_split(N_ROWS, 7)["test"]]
    every = sorted(i for split in other.values() for i in split)
    assert every == sorted(r["id"] for r in rows)  # disjoint and complete


def test_single_file_caps_take_the_first_rows_of_each_split(single_files, rows):
    splits = load_splits(DataConfig(path=str(single_files["jsonl"]), max_train_examples=3, max_eval_examples=2))
    want = expected_split(N_ROWS, 0)
    assert [e.id for e in splits["train"]] == [rows[i]["id"] for i in want["train"][:3]]
    assert [e.id for e in splits["test"]] == [rows[i]["id"] for i in want["test"][:2]]


def test_custom_fields_and_missing_ids(tmp_path):
    path = tmp_path / "custom.jsonl"
    path.write_text("".join(json.dumps({"text": f"article {i}", "summary": f"summary {i}"}) + "\n" for i in range(10)))
    splits = load_splits(DataConfig(path=str(path), source_field="text", target_field="summary"))
    everything = [e for split in splits.values() for e in split]
    assert sorted(e.source for e in everything) == sorted(f"article {i}" for i in range(10))
    assert len({e.id for e in everything}) == 10  # generated ids stay unique


# ---------------------------------------------------------------------------------------------- bad input


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def error_of(path) -> str:
    with pytest.raises(MedsumError) as info:
        load_splits(DataConfig(path=str(path)))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_record_missing_the_target_names_file_and_line(tmp_path, rows):
    lines = [json.dumps(r) for r in rows[:10]]
    lines[2] = json.dumps({k: v for k, v in rows[2].items() if k != "abstract"})
    message = error_of(write_lines(tmp_path / "noabs.jsonl", lines))
    assert "noabs.jsonl line 3" in message
    assert "'abstract'" in message


def test_record_missing_the_source_names_file_and_line(tmp_path, rows):
    lines = [json.dumps(r) for r in rows[:10]]
    lines[6] = json.dumps({k: v for k, v in rows[6].items() if k != "article"})
    message = error_of(write_lines(tmp_path / "noart.jsonl", lines))
    assert "noart.jsonl line 7" in message and "'article'" in message


def test_non_json_line_names_file_and_line(tmp_path, rows):
    lines = [json.dumps(r) for r in rows[:10]]
    lines[4] = "not json"
    message = error_of(write_lines(tmp_path / "garbage.jsonl", lines))
    assert "garbage.jsonl line 5" in message and "JSON" in message


def test_non_object_and_non_text_records(tmp_path, rows):
    lines = [json.dumps(r) for r in rows[:5]] + ["[1, 2]"]
    assert "line 6" in error_of(write_lines(tmp_path / "list.jsonl", lines))
    lines = [json.dumps(r) for r in rows[:5]] + [json.dumps(dict(rows[5], abstract=None))]
    assert "line 6" in error_of(write_lines(tmp_path / "null.jsonl", lines))


def test_empty_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    message = error_of(tmp_path / "empty.jsonl")
    assert "empty.jsonl" in message and "empty" in message.replace("empty.jsonl", "")
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    assert "blank.jsonl" in error_of(tmp_path / "blank.jsonl")


def test_missing_path(tmp_path):
    assert str(tmp_path / "nope") in error_of(tmp_path / "nope")


def test_directory_without_a_split_names_it(tmp_path, rows):
    for split in ("train", "test"):
        write_lines(tmp_path / f"{split}.jsonl", [json.dumps(r) for r in rows[:3]])
    message = error_of(tmp_path)
    assert "validation" in message


def test_unsupported_file_type(tmp_path):
    (tmp_path / "data.txt").write_text("hello\n")
    assert "data.txt" in error_of(tmp_path / "data.txt")


def test_corrupt_gzip_names_the_file(tmp_path, rows):
    for split in ("train", "validation", "test"):
        write_lines(tmp_path / f"{split}.jsonl", [json.dumps(r) for r in rows[:3]])
    (tmp_path / "test.jsonl").unlink()
    (tmp_path / "test.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "test.jsonl.gz" in error_of(tmp_path)


# ---------------------------------------------------------------------------------------------- tokenize


class CountingTokenizer:
    """A real tokenizer that counts how often it is asked to tokenize."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend_tokenizer = tokenizer.backend_tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)


def test_tokenize_truncates_and_adds_eos(tiny_splits, tiny_tokenizer):
    encoded = tokenize(tiny_splits["test"], tiny_tokenizer, "summarize: ", 32, 16)
    assert len(encoded) == len(tiny_splits["test"])
    for row, example in zip(encoded, tiny_splits["test"]):
        assert 0 < len(row["input_ids"]) <= 32 and 0 < len(row["labels"]) <= 16
        assert row["input_ids"][-1] == tiny_tokenizer.eos_token_id == row["labels"][-1]
        assert row["input_ids"][:4] == tiny_tokenizer("summarize: " + example.source)["input_ids"][:4]


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_tokenize_cache_hit_is_identical_and_does_not_retokenize(tmp_path, tiny_splits, tiny_source):
    from medsum.models import load_tokenizer

    examples = tiny_splits["validation"]
    counting = CountingTokenizer(load_tokenizer(str(tiny_source)))
    first = list(tokenize(examples, counting, "summarize: ", 64, 32, cache=tmp_path))
    assert counting.calls >= 2  # sources and targets
    assert len(entries(tmp_path)) == 1
    # a later run loads the tokenizer afresh and must find the entry
    counting = CountingTokenizer(load_tokenizer(str(tiny_source)))
    again = tokenize(examples, counting, "summarize: ", 64, 32, cache=tmp_path)
    assert list(again) == first
    assert counting.calls == 0, "a cache hit must not tokenize again"
    assert first == list(tokenize(examples, load_tokenizer(str(tiny_source)), "summarize: ", 64, 32))  # uncached
    assert again.lengths() == [len(r["input_ids"]) + len(r["labels"]) for r in first]
    assert again[1] == first[1] and again[-1] == first[-1] and again[:2] == first[:2]


def test_tokenizer_fingerprint_ignores_and_keeps_truncation_state(tiny_source):
    from medsum.data import tokenizer_fingerprint
    from medsum.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_source))
    plain = tokenizer_fingerprint(tokenizer)
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(7)
    backend.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, length=9)
    assert tokenizer_fingerprint(tokenizer) == plain
    assert backend.truncation["max_length"] == 7 and backend.padding["length"] == 9  # restored
    tokenizer.add_tokens(["<new-token>"])
    assert tokenizer_fingerprint(tokenizer) != plain


def test_tokenize_cache_key_does_not_depend_on_earlier_calls(tmp_path, tiny_splits, tiny_source):
    from medsum.models import load_tokenizer

    examples = tiny_splits["validation"]
    counting = CountingTokenizer(load_tokenizer(str(tiny_source)))
    first = list(tokenize(examples, counting, "summarize: ", 64, 32, cache=tmp_path))
    calls = counting.calls
    assert list(tokenize(examples, counting, "summarize: ", 64, 32, cache=tmp_path)) == first
    assert counting.calls == calls
    assert len(entries(tmp_path)) == 1


@pytest.mark.parametrize("change", ["prefix", "max_source", "max_target", "texts"])
def test_tokenize_cache_key_covers_its_inputs(tmp_path, tiny_splits, tiny_source, change):
    from medsum.models import load_tokenizer

    examples = tiny_splits["validation"]
    tokenize(examples, load_tokenizer(str(tiny_source)), "summarize: ", 64, 32, cache=tmp_path)
    args = {"examples": examples, "prefix": "summarize: ", "max_source_tokens": 64, "max_target_tokens": 32}
    if change == "prefix":
        args["prefix"] = ""
    elif change == "max_source":
        args["max_source_tokens"] = 16
    elif change == "max_target":
        args["max_target_tokens"] = 8
    else:
        args["examples"] = [dataclasses.replace(examples[0], target="a different reference")] + examples[1:]
    counting = CountingTokenizer(load_tokenizer(str(tiny_source)))
    cached = tokenize(tokenizer=counting, cache=tmp_path, **args)
    assert counting.calls >= 2, f"changing {change} must miss the cache"
    assert len(entries(tmp_path)) == 2
    assert list(cached) == list(tokenize(tokenizer=load_tokenizer(str(tiny_source)), **args))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "no meta"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, tiny_splits, tiny_source, damage):
    from medsum.data.store import DATA_FILE, META_FILE
    from medsum.models import load_tokenizer

    examples = tiny_splits["test"]
    first = list(tokenize(examples, load_tokenizer(str(tiny_source)), "summarize: ", 64, 32, cache=tmp_path))
    (entry,) = entries(tmp_path)
    data = entry / DATA_FILE
    if damage == "truncated":
        data.write_bytes(data.read_bytes()[:-20])
    elif damage == "flipped":  # same size, one byte changed inside the ids
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    else:
        (entry / META_FILE).unlink()
    counting = CountingTokenizer(load_tokenizer(str(tiny_source)))
    assert list(tokenize(examples, counting, "summarize: ", 64, 32, cache=tmp_path)) == first
    assert counting.calls >= 2  # the damaged entry was not trusted
    assert list(tokenize(examples, counting, "summarize: ", 64, 32, cache=tmp_path)) == first  # and was replaced


# ---------------------------------------------------------------------------------------------- batching


def test_length_grouped_batches_cover_every_index_once():
    lengths = [random.Random(i).randint(5, 500) for i in range(1003)]
    batches = length_grouped_batches(lengths, 8, seed=3, epoch=0, group_factor=5)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(1003))
    assert Counter(len(b) for b in batches)[8] >= len(batches) - 26  # only a chunk's last batch may be short
    assert all(len(b) <= 8 for b in batches)
    for batch in batches:  # each batch holds similar lengths, longest first
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_length_grouped_batches_are_deterministic_per_seed_and_epoch():
    lengths = list(range(100, 0, -1))
    a = length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a == length_grouped_batches(lengths, 4, seed=1, epoch=0)
    assert a != length_grouped_batches(lengths, 4, seed=1, epoch=1)
    assert a != length_grouped_batches(lengths, 4, seed=2, epoch=0)
    assert sorted(i for b in length_grouped_batches(lengths, 4, seed=1, epoch=1) for i in b) == list(range(100))


def test_length_grouping_reduces_padding():
    lengths = [random.Random(i).randint(1, 1000) for i in range(400)]
    grouped = length_grouped_batches(lengths, 8, seed=0, epoch=0)
    order = list(range(400))
    random.Random(0).shuffle(order)
    plain = [order[i:i + 8] for i in range(0, 400, 8)]

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < padding(plain) / 4


def test_collate_pads_inputs_with_pad_id_and_labels_with_minus_100():
    rows = [{"input_ids": [5, 6, 7, 1], "labels": [8, 1]}, {"input_ids": [9, 1], "labels": [4, 3, 2, 1]}]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [9, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[8, 1, -100, -100], [4, 3, 2, 1]]
    without = collate(rows, pad_id=0, with_labels=False)
    assert set(without) == {"input_ids", "attention_mask"}


# ---------------------------------------------------------------------------------------------- scale


def test_bad_line_deep_in_a_large_file_is_named(tmp_path):
    path = tmp_path / "large.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(30_000):
            record = json.dumps({"id": f"x{i}", "article": "a b", "abstract": "c"})
            handle.write("{not json\n" if i == 29_876 else record + "\n")
    message = error_of(path)
    assert "large.jsonl.gz line 29877" in message and "JSON" in message


def test_split_is_a_sequence_of_examples(data_dir, test_rows):
    splits = load_splits(DataConfig(path=str(data_dir), max_train_examples=5, max_eval_examples=7))
    test = splits["test"]
    assert len(test) == 7
    assert test[0].id == test_rows[0]["id"] and test[-1].id == test_rows[6]["id"]
    assert [e.id for e in test[2:4]] == [r["id"] for r in test_rows[2:4]]
    assert [e.target for e in test] == [r["abstract"] for r in test_rows[:7]]
    with pytest.raises(IndexError):
        test[7]


def test_a_prepared_split_is_reused_until_the_file_changes(tmp_path, rows, capsys):
    for split in ("train", "validation", "test"):
        write_lines(tmp_path / f"{split}.jsonl", [json.dumps(r) for r in rows[:6]])
    cache = tmp_path / "cache"
    first = load_splits(DataConfig(path=str(tmp_path)), cache=cache)
    assert capsys.readouterr().out.count("prepared ") == 3
    again = load_splits(DataConfig(path=str(tmp_path)), cache=cache)
    assert capsys.readouterr().out.count("prepared ") == 0
    assert [e.target for e in again["train"]] == [e.target for e in first["train"]]
    assert again["train"].fingerprint == first["train"].fingerprint
    write_lines(tmp_path / "train.jsonl", [json.dumps(dict(r, abstract="changed")) for r in rows[:6]])
    changed = load_splits(DataConfig(path=str(tmp_path)), cache=cache)
    assert capsys.readouterr().out.count("prepared ") == 1
    assert {e.target for e in changed["train"]} == {"changed"}
    assert changed["train"].fingerprint != first["train"].fingerprint


def _build_slowly(entry: str, log: str) -> None:
    """One of several processes asking for the same entry: only one may build it."""
    import time

    from medsum.data import store

    def build(out):
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        out.write_bytes(b"x" * 100)
        return {"rows": 1}

    store.open_or_build(Path(entry), build, "a test entry")


def test_processes_asking_for_one_entry_build_it_once(tmp_path):
    import multiprocessing

    log = tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_build_slowly, args=(str(tmp_path / "entry"), str(log))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert log.read_text() == "built\n"
    assert (tmp_path / "entry" / "data.arrow").read_bytes() == b"x" * 100


def test_hub_dataset_splits_read_from_datasets_cache_files(tmp_path, rows, monkeypatch):
    """A hub dataset is used as `datasets` cached it: column checks, generated ids, caps, batched reading from its
    Arrow files (the hub is unreachable here: `load_dataset` returns a DatasetDict saved to disk, as it would)."""
    import datasets

    records = {"article": [r["article"] for r in rows], "abstract": [r["abstract"] for r in rows]}
    saved = tmp_path / "hub-copy"
    datasets.DatasetDict({split: datasets.Dataset.from_dict(records)
                          for split in ("train", "validation", "test")}).save_to_disk(str(saved))
    monkeypatch.setattr(datasets, "load_dataset", lambda path: datasets.load_from_disk(str(saved)))
    splits = load_splits(DataConfig(path="ccdv/pubmed-summarization", max_eval_examples=5))
    assert splits["train"].arrow_files and len(splits["train"]) == N_ROWS and len(splits["test"]) == 5
    assert [e.id for e in splits["test"]] == [f"test-{i}" for i in range(5)]
    assert [e.target for e in splits["train"]] == records["abstract"]
    assert splits["test"][4].source == records["article"][4]
    with pytest.raises(MedsumError, match="'summary' column"):
        load_splits(DataConfig(path="ccdv/pubmed-summarization", target_field="summary"))
