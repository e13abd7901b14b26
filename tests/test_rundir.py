"""The run directory: one atomic writer for files and folders, finished and status, metrics.json's schema."""

from __future__ import annotations

import json
import os

import pytest

from medsum import rundir


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / rundir.METRICS
    rundir.atomic_write_text(target, "old")
    rundir.atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in tmp_path.iterdir()] == [rundir.METRICS]


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch, fail_at):
    target = tmp_path / rundir.METRICS
    rundir.atomic_write_text(target, "old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rundir.os, fail_at, crash)
    with pytest.raises(OSError, match="disk full"):
        rundir.atomic_write_text(target, "new " * 10_000)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == [rundir.METRICS], "no partial or temporary file left"


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        rundir.atomic_write_text(tmp_path / rundir.CONFIG, "x: 1\n")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_follows_the_umask(tmp_path):
    target = tmp_path / rundir.METRICS
    old = os.umask(0o022)
    try:
        rundir.atomic_write_text(target, "{}")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: collaborators read the results


def test_atomic_json_and_bytes(tmp_path):
    rundir.atomic_write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
    rundir.atomic_write_bytes(tmp_path / "sub" / "c.bin", b"\x00\x01")  # the folder is created
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"\x00\x01"


# ---------------------------------------------------------------------------------------------- folders


def test_atomic_dir_swaps_a_whole_folder_in(tmp_path):
    target = tmp_path / rundir.ADAPTER
    with rundir.atomic_dir(target) as staging:
        (staging / "old.txt").write_text("1")
    old = os.umask(0o022)
    try:
        with rundir.atomic_dir(target) as staging:
            assert not (staging / "old.txt").exists() and staging.parent == tmp_path
            (staging / "new.txt").write_text("2")
            (staging / "secret.bin").write_text("3")
            (staging / "secret.bin").chmod(0o600)  # as safetensors writes
    finally:
        os.umask(old)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt", "secret.bin"]
    assert [p.name for p in tmp_path.iterdir()] == [rundir.ADAPTER], "no staging or old folder left"
    assert target.stat().st_mode & 0o777 == 0o755 and (target / "secret.bin").stat().st_mode & 0o777 == 0o644


def test_a_failed_atomic_dir_keeps_the_old_folder(tmp_path):
    target = tmp_path / "report"
    with rundir.atomic_dir(target) as staging:
        (staging / "summary.md").write_text("old")
    with pytest.raises(RuntimeError), rundir.atomic_dir(target) as staging:
        (staging / "summary.md").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "summary.md").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_atomic_dir_without_replace_keeps_the_folder_finished_first(tmp_path):
    target = tmp_path / "tiny"
    with rundir.atomic_dir(target, replace=False) as first:
        with rundir.atomic_dir(target, replace=False) as second:  # a concurrent builder finishes first
            (second / "config.json").write_text("second")
        (first / "config.json").write_text("first")
    assert (target / "config.json").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


# ---------------------------------------------------------------------------------------------- reading


def test_status_first_match_wins(tmp_path):
    run = tmp_path / "run"
    assert rundir.status(run) == "pending"
    rundir.atomic_write_text(run / rundir.ERROR, "ValueError: bad\n\ntraceback")
    assert rundir.status(run) == "failed" and rundir.error_message(run) == "ValueError: bad"
    rundir.atomic_write_json(run / rundir.RUNNING, {"pid": os.getpid(), "host": os.uname().nodename})
    assert rundir.status(run) == "running"
    rundir.atomic_write_json(run / rundir.RUNNING, {"pid": 2 ** 22 + 1, "host": os.uname().nodename})
    assert rundir.status(run) == "failed", "the marker of a dead process does not count"
    assert not rundir.is_finished(run)
    rundir.write_metrics(run, rundir.Metrics(model="tiny", method="full", method_config={}, seed=1, params={}))
    assert rundir.status(run) == "done" and rundir.is_finished(run)


def test_metrics_round_trip_in_schema_order(tmp_path):
    metrics = rundir.Metrics(model="tiny", method="lora", method_config={"r": 8}, seed=3,
                             params={"trainable": 10}, test={"rouge1": 30.5})
    written = rundir.write_metrics(tmp_path, metrics)
    assert json.loads((tmp_path / rundir.METRICS).read_text()) == written == rundir.read_json(tmp_path / rundir.METRICS)
    assert list(written)[:5] == ["model", "method", "method_config", "seed", "params"]
    assert written["status"] == "done" and written["test"] == {"rouge1": 30.5}


def test_predictions_and_config_round_trip(tmp_path):
    rows = [{"id": "a", "prediction": "p", "rouge1": 1.0}, {"id": "b", "prediction": "", "rouge1": 0.0}]
    rundir.write_predictions(tmp_path, rows)
    assert rundir.read_jsonl(tmp_path / rundir.PREDICTIONS) == rows
    rundir.write_config(tmp_path, {"seed": 1, "method": {"name": "full"}})
    assert rundir.read_config(tmp_path) == {"seed": 1, "method": {"name": "full"}}
    assert rundir.read_config(tmp_path / "missing") == {} and rundir.read_json(tmp_path / "missing.json") == {}


def test_clear_outputs_keeps_the_study_membership(tmp_path):
    rundir.write_config(tmp_path, {"seed": 1})
    rundir.write_predictions(tmp_path, [])
    (tmp_path / rundir.CHECKPOINTS / "step-2").mkdir(parents=True)
    rundir.atomic_write_json(tmp_path / rundir.MEMBERSHIP, {"study": "s"})
    rundir.clear_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [rundir.MEMBERSHIP]


def test_a_damaged_jsonl_line_is_one_error_naming_file_and_line(tmp_path):
    from medsum.errors import MedsumError

    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n{"id": "c", "predi\n')
    with pytest.raises(MedsumError, match=r"predictions\.jsonl line 4: not valid JSON"):
        rundir.read_jsonl(path)
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(MedsumError, match=r"line 2: expected a JSON object"):
        rundir.read_jsonl(path)
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert rundir.read_jsonl(path) == [{"id": "a"}, {"id": "b"}]
