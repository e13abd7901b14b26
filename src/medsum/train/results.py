"""What a finished run leaves behind: its weights, its predictions and metrics.json (``rundir.Metrics``), with the
hardware, memory and package versions it ran with."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import shutil
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.evaluate import SENTENCE_SPLITTER
from medsum.evaluation import validation_rows
from medsum.methods import METHODS
from medsum.models import is_tiny
from medsum.train.build import Setup
from medsum.train.loop import Progress


def save_weights(setup_: Setup, run_dir: Path) -> int:
    """Saves what the method trained (adapter/ or model/), the tokenizer, and a tiny model's base; returns the size
    in bytes of the trained weights."""
    method = METHODS[setup_.cfg.method.name]
    folder = run_dir / (rundir.ADAPTER if method.saves_adapter else rundir.MODEL)
    with rundir.atomic_dir(folder) as staging:
        method.save(setup_.model, staging)
    with rundir.atomic_dir(run_dir / rundir.TOKENIZER) as staging:
        setup_.tokenizer.save_pretrained(staging)
    if is_tiny(setup_.cfg.model.name):
        with rundir.atomic_dir(run_dir / rundir.BASE_MODEL) as staging:
            shutil.copytree(setup_.model_source, staging, dirs_exist_ok=True)
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def write_results(setup_: Setup, run_dir: Path, progress: Progress, test_summary: dict, rows: list[dict],
                  test_seconds: float, generated: int, weight_bytes: int) -> dict:
    """Writes predictions.jsonl, then metrics.json (which marks the run finished); returns the metrics."""
    cfg = setup_.cfg
    rundir.write_predictions(run_dir, rows)
    method_config = {k: v for k, v in dataclasses.asdict(cfg.method).items() if k != "name"}
    efficiency = {
        "train_seconds": progress.train_seconds,
        "train_tokens_per_second": progress.train_tokens / progress.train_seconds if progress.train_seconds else 0,
        "peak_memory_bytes": peak_memory_bytes(),
        "eval_seconds": progress.eval_seconds + test_seconds,
        "generate_tokens_per_second": generated / test_seconds if test_seconds else 0.0,
        "adapter_bytes": weight_bytes,
        "precision": cfg.train.precision,
    }
    rouge = {"package": "rouge-score", "use_stemmer": True, "f1_x100": True,
             "references": "full reference text from the data", "rougeLsum_sentence_splitter": SENTENCE_SPLITTER}
    metrics = rundir.Metrics(
        model=cfg.model.name, method=cfg.method.name, method_config={**method_config, **setup_.method_info},
        seed=cfg.seed, params=setup_.params, validation=_validation_summary(setup_, progress), test=test_summary,
        efficiency=efficiency, stopped_early=progress.stopped_early, hardware=_hardware(setup_.accelerator),
        rouge=rouge, versions=_versions())
    return rundir.write_metrics(run_dir, metrics)


def _validation_summary(setup_: Setup, progress: Progress) -> dict[str, Any]:
    if progress.evaluations == 0:
        return {"best_step": progress.best_step, "evaluations": 0,
                "skipped": "one candidate only (the final weights); train.validate_lone_candidate=true validates it"}
    return {**progress.best_validation, "best_step": progress.best_step, "evaluations": progress.evaluations,
            "num_beams": setup_.cfg.train.eval_num_beams, "examples": validation_rows(setup_)}


def _hardware(accelerator) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(0), "device_type": "cuda", "count": accelerator.num_processes}
    name = platform.processor() or platform.machine()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": name, "device_type": "cpu", "count": accelerator.num_processes, "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def reset_peak_memory() -> None:
    """Starts this run's peak-memory reading afresh (a study runs many runs in one process)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the process's peak resident set (VmHWM)
    except OSError:
        pass


def peak_memory_bytes() -> int:
    """Peak CUDA memory allocated on a GPU (the peak, not the end-of-step reading); peak RSS of the process on CPU
    since reset_peak_memory."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("medsum", "torch", "transformers", "peft", "accelerate", "rouge-score", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out
