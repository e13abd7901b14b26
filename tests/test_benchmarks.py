"""The benchmark scripts of issue 5 run offline end to end (on the tiny model, a few steps) and append their table,
with the command that produced it, to the report file they are given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = {
    "end_to_end.py": (["--steps", "2", "--examples", "8", "--eval-examples", "2"],
                      ["## End to end: stock recipe vs medsum train (tiny model)", "**Stock / medsum wall time:",
                       "Data preparation of a study's second run"]),
    "stock_recipe.py": (["--steps", "2", "--examples", "8", "--eval-examples", "2"],
                        ["## Stock recipe alone (tiny model", "stock Seq2SeqTrainer"]),
    "train_step.py": (["--methods", "lora", "full", "--precisions", "fp32", "--batch", "2", "--source", "32",
                       "--target", "16", "--steps", "1", "--no-profile"],
                      ["## Training step: throughput and MFU (tiny model)", "| lora | fp32 |", "| full | fp32 |"]),
    "data_prep.py": (["--sizes", "300", "2100", "--max-source", "64", "--max-target", "16"],
                     ["## Data preparation at scale (tiny tokenizer)", "| 300 |", "| 2,100 |"]),
    "generate.py": (["--examples", "3", "--batch-size", "2", "--beams", "2", "--max-new-tokens", "4", "--pairs",
                     "8"],
                    ["## Generation: medsum vs plain model.generate (tiny model)", "3/3",
                     "## ROUGE scoring: process pool vs one process", "identical"]),
    "serve_load.py": (["--clients", "1", "3", "--min-requests", "3", "--num-beams", "1", "--max-new-tokens", "4"],
                      ["## Serving under load: latency and throughput (medsum serve)", "| 1 | 3 | 3 |",
                       "| 3 | 3 | 3 |"]),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_runs_and_reports(script, tmp_path, data_dir):
    flags, expected = SCRIPTS[script]
    report = tmp_path / "performance.md"
    command = [sys.executable, str(BENCHMARKS / script), "--model", "tiny", "--data", str(data_dir), *flags,
               "--report", str(report)]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = report.read_text()
    assert f"`python benchmarks/{script} --model tiny" in text  # the command that produced the table
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in the report of {script}"
