"""Data parallel training on CPU (gloo): 2 processes x batch 2 optimise the same objective as 1 process x batch 4."""

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sumpubmed"


def _train(out: Path, batch_size: int, nproc: int, cache: Path | None = None) -> tuple[list[dict], str]:
    command = [sys.executable, "-m", "medsum", "train", "model.name=tiny", f"data.path={DATA}", "method.name=lora",
               "seed=3", "train.max_steps=3", "data.max_train_examples=16", "data.max_eval_examples=3",
               "data.max_source_tokens=128", "data.max_target_tokens=64", "generate.max_new_tokens=8",
               "generate.min_new_tokens=1", f"train.batch_size={batch_size}", f"output_dir={out}", "--quiet",
               "--nproc", str(nproc)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["MEDSUM_CACHE"] = str(cache)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()], done.stdout


def test_two_processes_match_one(tmp_path):
    one, _ = _train(tmp_path / "one", batch_size=4, nproc=1)
    two, printed = _train(tmp_path / "two", batch_size=2, nproc=2, cache=tmp_path / "fresh-cache")
    # one process prepared each split while the other waited and mapped it
    for split in ("train", "validation", "test"):
        assert printed.count(f"prepared the tokenized {split} split") == 1, printed
    steps_one = [(r["step"], r["loss"]) for r in one if "loss" in r]
    steps_two = [(r["step"], r["loss"]) for r in two if "loss" in r]
    assert [s for s, _ in steps_one] == [s for s, _ in steps_two] == [1, 2, 3]
    for (_, a), (_, b) in zip(steps_one, steps_two):
        assert abs(a - b) / a < 1e-3  # same global token-mean loss, not merely within the 5%
    assert {r["world_size"] for r in one if "loss" in r} == {1}
    assert {r["world_size"] for r in two if "loss" in r} == {2}
    # the sharded, gathered test generation loses and duplicates nothing
    ids = [json.loads(line)["id"] for line in (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 3
