"""Data parallel training on CPU (gloo): 2 processes x batch 2 optimise the same objective as 1 process x batch 4."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sumpubmed"


def _command(out: Path, batch_size: int, nproc: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "medsum", "train", "model.name=tiny", f"data.path={DATA}", "method.name=lora",
            "seed=3", "train.max_steps=3", "data.max_train_examples=16", "data.max_eval_examples=3",
            "data.max_source_tokens=128", "data.max_target_tokens=64", "generate.max_new_tokens=8",
            "generate.min_new_tokens=1", f"train.batch_size={batch_size}", f"output_dir={out}", *extra, "--quiet",
            "--nproc", str(nproc)]


def _env(cache: Path | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["MEDSUM_CACHE"] = str(cache)
    return env


def _train(out: Path, batch_size: int, nproc: int, cache: Path | None = None,
           extra: tuple[str, ...] = ()) -> tuple[list[dict], str]:
    done = subprocess.run(_command(out, batch_size, nproc, extra), capture_output=True, text=True, env=_env(cache),
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()], done.stdout


def test_two_processes_match_one(tmp_path):
    one, _ = _train(tmp_path / "one", batch_size=4, nproc=1)
    # a cache without prepared data, but with the first run's tiny model: its tokenizer must be the same one
    fresh = tmp_path / "fresh-cache"
    shutil.copytree(Path(os.environ["MEDSUM_CACHE"]) / "tiny", fresh / "tiny")
    two, printed = _train(tmp_path / "two", batch_size=2, nproc=2, cache=fresh)
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


@pytest.mark.slow
def test_sigterm_stops_every_process_at_one_step_and_the_rerun_resumes(tmp_path):
    """SIGTERM to `medsum train --nproc 2`: both processes agree on the step, checkpoint it (each with its own RNG
    state) and exit 143; the same command resumes to the losses and predictions of an uninterrupted run."""
    import signal
    import time

    settings = ("train.max_steps=8", "train.batch_size=2")
    clean_log, _ = _train(tmp_path / "clean", batch_size=2, nproc=2, extra=settings)
    out = tmp_path / "stopped"
    proc = subprocess.Popen(_command(out, 2, 2, settings), env=_env(None), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log, deadline = out / "train_log.jsonl", time.time() + 300
    while proc.poll() is None and time.time() < deadline and (
            not log.is_file() or log.read_text().count('"loss"') < 2):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read()[-2000:]
    (checkpoint,) = (out / "checkpoints").iterdir()
    assert 2 <= int(checkpoint.name.split("-")[1]) < 8
    assert len(torch.load(checkpoint / "optimizer.pt", weights_only=False)["rng"]) == 2
    resumed_log, printed = _train(out, batch_size=2, nproc=2, extra=settings)
    assert f"resuming from {checkpoint}" in printed
    assert resumed_log == clean_log
    assert (out / "predictions.jsonl").read_text() == (tmp_path / "clean" / "predictions.jsonl").read_text()
