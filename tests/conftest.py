"""Shared fixtures: the real SumPubMed sample, an isolated medsum cache, tiny-run configs, and one trained tiny run per
method (trained once per session and shared, because every run costs seconds)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

# Before anything imports huggingface_hub: no test may try the network (CI has none, and retries are slow).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).parents[1]
SRC = REPO / "src"
DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "sumpubmed"

# The acceptance run (issue 2) scaled down: a few steps on a few examples, short texts, short generations.
# batch_size 4 on 8 examples makes an epoch 2 steps, so a 2-step run validates once.
TINY_OVERRIDES = (
    "model.name=tiny",
    f"data.path={DATA}",
    "data.max_train_examples=8",
    "data.max_eval_examples=3",
    "data.max_source_tokens=128",
    "data.max_target_tokens=64",
    "train.max_steps=2",
    "train.batch_size=4",
    "generate.max_new_tokens=16",
    "generate.min_new_tokens=1",
)
METHOD_SEEDS = {"lora": 1, "prompt_tuning": 2, "full": 3}  # different seeds: the test examples must not change


def tiny_overrides(output_dir: str | Path, method: str = "lora", *extra: str) -> list[str]:
    """``key=value`` overrides of a tiny run into ``output_dir`` (later overrides win)."""
    return [*TINY_OVERRIDES, f"method.name={method}", f"output_dir={output_dir}", *extra]


def tiny_run_config(output_dir: str | Path, method: str = "lora", *extra: str):
    """The RunConfig of a tiny run (see ``TINY_OVERRIDES``), with optional extra ``key=value`` overrides."""
    from medsum.config import load_run_config

    return load_run_config(None, tiny_overrides(output_dir, method, *extra))


def read_jsonl(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def subprocess_env() -> dict[str, str]:
    """The environment for ``python -m medsum`` in a subprocess: offline, this checkout's sources first."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def medsum_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "medsum", *args]


@pytest.fixture(scope="session", autouse=True)
def isolated_medsum_cache(tmp_path_factory) -> Path:
    """Tiny models and tokenize caches go to a fresh folder: tests never depend on (or pollute) ~/.cache/medsum."""
    cache = tmp_path_factory.mktemp("medsum-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSUM_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "test.jsonl.gz").is_file():
        pytest.fail(f"the SumPubMed sample is missing: {DATA.resolve()} (see MISSION.md)")
    return DATA


@pytest.fixture(scope="session")
def test_rows(data_dir) -> list[dict]:
    """The test split of the real data, in file order."""
    return read_jsonl(data_dir / "test.jsonl.gz")


@pytest.fixture(scope="session")
def tiny_splits(data_dir):
    """The capped splits of a tiny run (the tiny model's tokenizer trains on their training texts)."""
    from medsum.config import DataConfig
    from medsum.data import load_splits

    return load_splits(DataConfig(path=str(data_dir), max_train_examples=8, max_eval_examples=3))


@pytest.fixture(scope="session")
def tiny_source(tiny_splits) -> Path:
    """The tiny model directory (model + tokenizer), the same one the tiny runs use."""
    from medsum.tiny_models import tiny_model_dir

    return tiny_model_dir([t for e in tiny_splits["train"] for t in (e.source, e.target)])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_source):
    from medsum.models import load_tokenizer

    return load_tokenizer(str(tiny_source))


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, data_dir) -> dict[str, Path]:
    """One finished tiny run per method (seeds differ per method), trained once per session through the CLI's
    entry point, as a user would: ``medsum train --quiet key=value ...``."""
    from medsum.cli import main

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for method, seed in METHOD_SEEDS.items():
        # lora validates its one candidate (validation logging stays covered); the others skip it, the default
        extra = ["train.validate_lone_candidate=true"] if method == "lora" else []
        assert main(["train", "--quiet", *tiny_overrides(root / method, method, f"seed={seed}", *extra)]) == 0
        assert json.loads((root / method / "metrics.json").read_text())["status"] == "done"
        runs[method] = root / method
    return runs
