"""Experiment trackers (train.report_to): the TensorBoard event files and the local MLflow store, read back with the
trackers' own readers, hold train_log.jsonl's series, the validation and test ROUGE and the config; tracking
changes nothing that a run computes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import read_jsonl, tiny_overrides
from medsum.cli import main
from medsum.config import load_run_config
from medsum.errors import MedsumError
from medsum.train import tracking


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_runs) -> Path:
    """tiny_runs' LoRA run again, with TensorBoard and MLflow (MLflow's local default store)."""
    out = tmp_path_factory.mktemp("tracked") / "lora"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(out.parent)  # anything MLflow would leave in the current directory shows up here
        assert main(["train", "--quiet", *tiny_overrides(out, "lora", "seed=1", "train.validate_lone_candidate=true",
                                                         "train.report_to=[tensorboard,mlflow]")]) == 0
    return out


def train_log(run: Path) -> tuple[dict[int, float], dict[int, float], dict[int, float]]:
    """({step: loss}, {step: learning rate}, {step: validation ROUGE-1}) of train_log.jsonl."""
    rows = read_jsonl(run / "train_log.jsonl")
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    rates = {r["step"]: r["learning_rate"] for r in rows if "loss" in r}
    validation = {r["step"]: r["validation_rouge1"] for r in rows if r.get("event") == "validation"}
    return losses, rates, validation


def close(got: dict[int, float], want: dict[int, float], rel: float = 1e-6) -> bool:
    return set(got) == set(want) and all(math.isclose(got[s], want[s], rel_tol=rel, abs_tol=1e-9) for s in want)


def test_tensorboard_event_files_hold_the_train_log(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    series = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    losses, rates, validation = train_log(tracked_run)
    assert close(series["train/loss"], losses) and close(series["train/learning_rate"], rates)
    assert close(series["validation/rouge1"], validation)
    assert all(v > 0 for v in series["train/tokens_per_second"].values())
    test = json.loads((tracked_run / "metrics.json").read_text())["test"]
    assert [math.isclose(v, test["rouge1"], rel_tol=1e-6) for v in series["test/rouge1"].values()] == [True]


def test_the_mlflow_run_holds_the_train_log_config_and_tags(tracked_run):
    from mlflow.tracking import MlflowClient

    assert not (tracked_run.parent / "mlruns").exists() and not (tracked_run.parent / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{tracked_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lora-s1")  # a lone run's experiment: its name
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "lora-s1"
    tags = {k: run.data.tags[k] for k in ("model", "method", "seed")}
    assert tags == {"model": "tiny", "method": "lora", "seed": "1"}

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}

    losses, rates, validation = train_log(tracked_run)
    assert close(history("train/loss"), losses, 1e-12) and close(history("train/learning_rate"), rates, 1e-12)
    assert close(history("validation/rouge1"), validation, 1e-12)
    metrics = json.loads((tracked_run / "metrics.json").read_text())
    assert run.data.metrics["test/rougeL"] == pytest.approx(metrics["test"]["rougeL"], rel=1e-12)
    config = load_run_config(tracked_run / "config.yaml")
    params = run.data.params
    assert float(params["train.learning_rate"]) == config.train.learning_rate
    assert json.loads(params["train.report_to"]) == ["tensorboard", "mlflow"] and params["name"] == "lora-s1"


def test_tracking_changes_nothing_a_run_computes(tracked_run, tiny_runs):
    plain = tiny_runs["lora"]
    assert train_log(tracked_run) == train_log(plain)
    assert read_jsonl(tracked_run / "predictions.jsonl") == read_jsonl(plain / "predictions.jsonl")
    tracked, untracked = (json.loads((d / "metrics.json").read_text())["test"] for d in (tracked_run, plain))
    assert tracked["rouge1"] == untracked["rouge1"]


def test_an_unknown_tracker_is_refused_naming_the_key():
    with pytest.raises(MedsumError, match=r"train.report_to: unknown tracker 'tensorbord' \(known: tensorboard, "):
        load_run_config(None, ["train.report_to=[tensorbord]"])
    assert load_run_config(None, ["train.report_to=mlflow,tensorboard"]).train.report_to == ["mlflow", "tensorboard"]
    assert load_run_config(None, []).train.report_to == []


def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tracking.TRACKERS, "wandb", "no_such_module_medsum_test")
    assert main(["train", "--quiet", *tiny_overrides(tmp_path / "run", "lora", "train.report_to=[wandb]")]) == 2
    err = capsys.readouterr().err
    assert "train.report_to: wandb is not installed (pip install 'medsum[trackers]'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_resumed_run_continues_its_tracker_runs(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medsum import train
    from test_checkpoint import Interrupted, counting_train_step

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # periodic checkpoints at 2 and 4, a crash in step 6: the rerun redoes step 5 (logged once already) from step 4
    cfg = load_run_config(None, tiny_overrides(tmp_path, "lora", "seed=5", "train.max_steps=6", "train.save_every=2",
                                               "train.report_to=[tensorboard,mlflow]", "generate.num_beams=1"))
    with monkeypatch.context() as patch:
        counting_train_step(patch, fail_on=6)
        with pytest.raises(Interrupted):
            train.run(cfg, show_progress=False)
    assert max(train_log(tmp_path)[0]) == 5
    train.run(cfg, show_progress=False)
    losses, _, _ = train_log(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lora-s5").experiment_id])
    assert run.info.status == "FINISHED"
    history = {}
    for m in client.get_metric_history(run.info.run_id, "train/loss"):
        history.setdefault(m.step, set()).add(m.value)
    assert history == {step: {loss} for step, loss in losses.items()}  # a redone step logs the same loss again
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert close({e.step: e.value for e in events.Scalars("train/loss")}, losses)
    assert [e.step for e in events.Scalars("train/loss")] == sorted(losses)  # the first attempt's step 5 purged
