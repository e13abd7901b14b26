"""`medsum evaluate` on a finished tiny run: a run from before the measures gains exactly what training writes
today, and nothing else changes."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import read_jsonl
from medsum.cli import main


def _strip_measures(run_dir) -> None:
    """Makes the run look like one finished before the measures existed."""
    rows = read_jsonl(run_dir / "predictions.jsonl")
    (run_dir / "predictions.jsonl").write_text("".join(
        json.dumps({k: v for k, v in row.items() if k != "measures"}) + "\n" for row in rows))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    del metrics["test"]["measures"]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_evaluate_adds_the_measures_a_run_writes_and_changes_nothing_else(tiny_runs, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(tiny_runs["lora"], old)
    _strip_measures(old)
    assert main(["evaluate", str(old)]) == 0
    assert str(old) in capsys.readouterr().out
    assert read_jsonl(old / "predictions.jsonl") == read_jsonl(tiny_runs["lora"] / "predictions.jsonl")
    finished = json.loads((tiny_runs["lora"] / "metrics.json").read_text())
    assert json.loads((old / "metrics.json").read_text()) == finished
    before = (old / "predictions.jsonl").read_bytes()
    assert main(["evaluate", str(old)]) == 0  # again: the same files
    assert (old / "predictions.jsonl").read_bytes() == before


@pytest.mark.parametrize("damage, message", [("metrics.json", "not a finished run"),
                                             ("predictions.jsonl", "missing or empty"),
                                             ("config.yaml", "no data settings")])
def test_evaluate_refuses_an_unfinished_run(tiny_runs, tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    (run / damage).unlink()
    assert main(["evaluate", str(run)]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_reads_only_the_data_settings_of_the_config(tiny_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "a_setting_of_the_future: 1\n")
    assert main(["evaluate", str(run)]) == 0
    assert read_jsonl(run / "predictions.jsonl") == read_jsonl(tiny_runs["lora"] / "predictions.jsonl")


def test_evaluate_names_an_example_missing_from_the_data(tiny_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["lora"], run)
    rows = read_jsonl(run / "predictions.jsonl")
    rows[0]["id"] = "no-such-example"
    (run / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["evaluate", str(run)]) == 2
    assert "'no-such-example'" in capsys.readouterr().err
