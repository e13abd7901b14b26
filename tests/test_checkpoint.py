"""Checkpoints and resume (issue 8): the newest complete checkpoint is found and damaged ones are skipped, retention
is bounded, and an interrupted run resumed from a checkpoint ends exactly like an uninterrupted
one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import medsum_command, read_jsonl, subprocess_env, tiny_overrides, tiny_run_config
from medsum import checkpoint as ckpt
from medsum import train
from medsum.train import loop

# ---------------------------------------------------------------------------------------------- unit


def small_training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].bias.requires_grad_(False)  # frozen parameters are not checkpointed
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def save(root: Path, step: int, model, optimizer, scheduler, keep: int = 10, best=None) -> Path:
    return ckpt.save_checkpoint(root, step, model, optimizer, scheduler, {"best_score": float(step)}, best, keep)


def test_checkpoint_round_trip(tmp_path):
    model, optimizer, scheduler = small_training_state()
    best = {name: value * 2 for name, value in ckpt.trainable_state(model).items()}
    save(tmp_path, 3, model, optimizer, scheduler, best=best)
    loaded = ckpt.load_latest_checkpoint(tmp_path)
    assert loaded["path"] == tmp_path / "step-3"
    assert loaded["state"] == {"best_score": 3.0, "step": 3}
    assert set(loaded["trainable"]) == {"0.weight", "1.weight", "1.bias"}  # not the frozen 0.bias
    other, other_optimizer, other_scheduler = small_training_state(seed=1)
    ckpt.load_trainable_state(other, loaded["trainable"])
    other_optimizer.load_state_dict(loaded["optimizer"])
    other_scheduler.load_state_dict(loaded["scheduler"])
    for name, value in ckpt.trainable_state(model).items():
        assert torch.equal(dict(other.named_parameters())[name], value)
    moments = [o.state_dict()["state"][0]["exp_avg"] for o in (other_optimizer, optimizer)]
    assert torch.equal(*moments)
    assert other_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert all(torch.equal(loaded["best"][k], best[k]) for k in best)


def test_rng_state_round_trip():
    import numpy as np

    state = ckpt.rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    ckpt.restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == first


def test_newest_checkpoint_is_chosen(tmp_path):
    model, optimizer, scheduler = small_training_state()
    for step in (2, 4, 10):
        save(tmp_path, step, model, optimizer, scheduler)
    assert ckpt.load_latest_checkpoint(tmp_path)["state"]["step"] == 10  # by number: "step-10" < "step-4" as names
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 10]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated weights", "no state.json", "truncated state.json",
                                    "truncated optimizer", "no weights", "step mismatch"])
def test_damaged_newest_checkpoint_falls_back_to_the_older(tmp_path, damage):
    model, optimizer, scheduler = small_training_state()
    save(tmp_path, 2, model, optimizer, scheduler)
    newest = save(tmp_path, 4, model, optimizer, scheduler)
    if damage == "truncated weights":
        truncate(newest / "trainable.safetensors")
    elif damage == "no state.json":
        (newest / "state.json").unlink()
    elif damage == "truncated state.json":
        truncate(newest / "state.json")
    elif damage == "truncated optimizer":
        truncate(newest / "optimizer.pt")
    elif damage == "no weights":
        (newest / "trainable.safetensors").unlink()
    else:
        (newest / "state.json").write_text(json.dumps({"step": 7}))
    assert ckpt.load_latest_checkpoint(tmp_path)["path"] == tmp_path / "step-2"


def test_no_complete_checkpoint(tmp_path):
    assert ckpt.load_latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "step-3").mkdir()
    (tmp_path / ".step-5-abc").mkdir()  # a writer's staging folder
    assert ckpt.load_latest_checkpoint(tmp_path) is None


def test_keep_checkpoints_bounds_what_stays_on_disk(tmp_path):
    model, optimizer, scheduler = small_training_state()
    (tmp_path / ".step-1-crashed").mkdir()  # staging folder of a crashed writer
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step, model, optimizer, scheduler, keep=2)
        assert len(list(tmp_path.iterdir())) <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-4", "step-5"]


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    model, optimizer, scheduler = small_training_state()
    stale = save(tmp_path, 6, model, optimizer, scheduler, keep=1)
    truncate(stale / "trainable.safetensors")  # e.g. lost on power failure: the rerun starts over
    assert ckpt.load_latest_checkpoint(tmp_path) is None
    save(tmp_path, 2, model, optimizer, scheduler, keep=1)
    loaded = ckpt.load_latest_checkpoint(tmp_path)
    assert loaded is not None and loaded["state"]["step"] == 2


# ---------------------------------------------------------------------------------------------- resume


RESUME_SETTINGS = ("seed=5", "train.max_steps=6", "train.save_every=2", "train.eval_max_examples=2",
                   "generate.num_beams=1")


class Interrupted(Exception):
    pass


def counting_train_step(monkeypatch, fail_on: int | None = None) -> list[int]:
    """Wraps the loop's train_step: counts the optimizer steps run, optionally crashing on the ``fail_on``-th."""
    calls: list[int] = []
    original = loop.train_step

    def step(*args, **kwargs):
        calls.append(len(calls) + 1)
        if len(calls) == fail_on:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    return calls


def outcome(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "test": {k: metrics["test"][k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len")},
        "validation": metrics["validation"],
        "predictions": read_jsonl(run_dir / "predictions.jsonl"),
        "log": read_jsonl(run_dir / "train_log.jsonl"),
    }


@pytest.mark.parametrize("method", ["lora", pytest.param("prompt_tuning", marks=pytest.mark.slow),
                                    pytest.param("full", marks=pytest.mark.slow)])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, capsys, method):
    clean = tmp_path / "clean"
    train.run(tiny_run_config(clean, method, *RESUME_SETTINGS), show_progress=False)

    crashed = tmp_path / "crashed"
    cfg = tiny_run_config(crashed, method, *RESUME_SETTINGS, "train.keep_checkpoints=1")
    with monkeypatch.context() as patch:
        counting_train_step(patch, fail_on=5)  # after the step-4 checkpoint
        with pytest.raises(Interrupted):
            train.run(cfg, show_progress=False)
    assert not (crashed / "metrics.json").exists()
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step-4"]  # keep_checkpoints=1
    capsys.readouterr()

    calls = counting_train_step(monkeypatch)
    assert train.run(cfg, show_progress=False) is not None
    assert "resuming from" in capsys.readouterr().out
    assert len(calls) == 2, "the rerun trains only steps 5 and 6"
    assert not (crashed / "checkpoints").exists()
    assert outcome(crashed) == outcome(clean)


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_result(tmp_path):
    """issue 8's acceptance, smaller: SIGKILL once two checkpoints exist, rerun the same command, same ROUGE."""
    settings = ("seed=5", "train.max_steps=12", "train.save_every=2", "train.keep_checkpoints=10",
                "train.eval_max_examples=2")
    clean = tmp_path / "clean"
    train.run(tiny_run_config(clean, "lora", *settings), show_progress=False)

    crashed = tmp_path / "crashed"
    command = medsum_command("train", "--quiet", *tiny_overrides(crashed, "lora", *settings))
    proc = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and len(ckpt.list_checkpoints(crashed / "checkpoints")) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (crashed / "metrics.json").exists()
    # damage the newest checkpoint as a crash while writing could: the rerun must fall back to the older one
    newest = ckpt.list_checkpoints(crashed / "checkpoints")[-1][1]
    truncate(newest / "trainable.safetensors")
    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    assert "resuming from" in rerun.stdout
    assert outcome(crashed) == outcome(clean)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from medsum.errors import MedsumError

    original = loop.train_step
    calls = []

    def diverging(*args, **kwargs):
        calls.append(1)
        loss, tokens = original(*args, **kwargs)
        return (float("nan") if len(calls) == 3 else loss), tokens

    monkeypatch.setattr(loop, "train_step", diverging)
    cfg = tiny_run_config(tmp_path, "lora", "train.max_steps=4", "train.save_every=1", "generate.num_beams=1",
                          "train.eval_max_examples=1")
    with pytest.raises(MedsumError) as info:
        train.run(cfg, show_progress=False)
    message = str(info.value)
    assert "step 3" in message and "learning" in message and "fp16" in message
    assert "\n" not in message
    assert not (tmp_path / "metrics.json").exists()
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [1, 2]
    assert ckpt.load_latest_checkpoint(tmp_path / "checkpoints")["state"]["step"] == 2



# ---------------------------------------------------------------------------------------------- stop signals


STOP_SETTINGS = ("seed=5", "train.max_steps=6", "train.eval_max_examples=2", "generate.num_beams=1")


def signalling_train_step(monkeypatch, signum: int, on_call: int) -> list[int]:
    """Wraps the loop's train_step: the process sends itself ``signum`` during its ``on_call``-th step."""
    calls: list[int] = []
    original = loop.train_step

    def step(*args, **kwargs):
        calls.append(len(calls) + 1)
        if len(calls) == on_call:
            os.kill(os.getpid(), signum)  # arrives mid-step: the step must still finish
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step)
    return calls


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stop_signal_checkpoints_the_step_and_the_rerun_ends_like_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                                         signum):
    from medsum.preemption import Preempted

    clean = tmp_path / "clean"
    train.run(tiny_run_config(clean, "lora", *STOP_SETTINGS), show_progress=False)
    stopped = tmp_path / "stopped"
    cfg = tiny_run_config(stopped, "lora", *STOP_SETTINGS)  # train.save_every stays 0: only the signal checkpoints
    with monkeypatch.context() as patch:
        signalling_train_step(patch, signum, on_call=3)
        with pytest.raises(Preempted) as info:
            train.run(cfg, show_progress=False)
    assert (info.value.step, info.value.exit_code) == (3, 128 + signum)
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # the handlers are given back
    assert [step for step, _ in ckpt.list_checkpoints(stopped / "checkpoints")] == [3]
    assert not (stopped / "metrics.json").exists()
    assert [r["step"] for r in read_jsonl(stopped / "train_log.jsonl") if "loss" in r] == [1, 2, 3]

    calls = counting_train_step(monkeypatch)
    train.run(cfg, show_progress=False)
    assert len(calls) == 3, "the rerun trains steps 4 to 6 only"
    assert outcome(stopped) == outcome(clean)


@pytest.mark.slow
def test_sigterm_to_the_cli_exits_143_with_a_checkpoint_and_the_same_command_resumes(tmp_path):
    """The issue's acceptance, smaller: SIGTERM to `medsum train` mid-training (default save_every 0)."""
    settings = ("seed=5", "train.max_steps=12", "train.eval_max_examples=2")
    clean = tmp_path / "clean"
    train.run(tiny_run_config(clean, "lora", *settings), show_progress=False)

    stopped = tmp_path / "stopped"
    command = medsum_command("train", "--quiet", *tiny_overrides(stopped, "lora", *settings))
    proc = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    log, deadline = stopped / "train_log.jsonl", time.time() + 300
    while proc.poll() is None and time.time() < deadline and sum(
            "loss" in r for r in (read_jsonl(log) if log.is_file() else [])) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert "SIGTERM received: stopped after step" in proc.stderr.read()
    steps = [step for step, _ in ckpt.list_checkpoints(stopped / "checkpoints")]
    assert len(steps) == 1 and 2 <= steps[0] < 12 and not (stopped / "metrics.json").exists()
    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    assert f"resuming from {stopped / 'checkpoints' / f'step-{steps[0]}'}" in rerun.stdout
    assert outcome(stopped) == outcome(clean)
