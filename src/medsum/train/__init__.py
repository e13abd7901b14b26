"""One training run, as a recipe: set up -> train (validate, keep the best, checkpoint) -> test the best -> save.

The parts: ``build`` (data, model and optimizer set-up), ``sampler`` (which examples each step trains on), ``loop``
(the training loop), ``medsum.evaluation`` (validation and test), ``results`` (weights, predictions, metrics.json).
The run directory it writes is described in ``medsum.rundir``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from medsum import evaluation, rundir
from medsum.config import RunConfig, config_from_dict, config_to_dict, save_run_config
from medsum.errors import MedsumError
from medsum.evaluate import ROUGE_KEYS
from medsum.partial_predictions import PartialPredictions
from medsum.preemption import Preempted
from medsum.train.build import Setup, check_inputs, setup
from medsum.train.loop import Progress, train_loop
from medsum.train.results import reset_peak_memory, save_weights, write_results
from medsum.train.tracking import Trackers, TrackingPlace

__all__ = ["run", "setup", "check_inputs", "Setup", "prepare_run_dir", "Preempted", "TrackingPlace"]


def run(cfg: RunConfig, force: bool = False, show_progress: bool = True,
        place: TrackingPlace | None = None) -> dict | None:
    """Runs one training run into its run directory and returns its metrics (None when already finished).

    A stop signal during training raises ``Preempted`` after writing a checkpoint (``medsum.preemption``);
    ``place``: where the trackers of train.report_to log (a study passes its own).
    """
    if rundir.is_finished(cfg.run_dir) and not force:
        return None
    reset_peak_memory()
    setup_ = setup(cfg, show_progress, place)  # every input error surfaces here, before anything is written
    start_run_dir(setup_, force)
    trackers = Trackers(setup_, place)
    try:
        progress = train_loop(setup_, setup_.cfg.run_dir, show_progress, trackers)
        summary, *test_result = evaluation.test(setup_, show_progress, setup_.cfg.run_dir)
        trackers.log_test(summary)
        metrics = finish(setup_, progress, summary, *test_result)
    except Preempted:
        trackers.close("KILLED")
        raise
    except BaseException:
        trackers.close("FAILED")
        raise
    trackers.close()
    return metrics


def start_run_dir(setup_: Setup, force: bool) -> None:
    """Prepares the run directory and records the resolved config (main process), then waits for every process."""
    cfg, accelerator = setup_.cfg, setup_.accelerator
    if accelerator.is_main_process:
        prepare_run_dir(cfg.run_dir, cfg, force)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        save_run_config(cfg, cfg.run_dir)
        p = setup_.params
        print(f"run {cfg.run_name}: {cfg.method.name} on {cfg.model.name}, {p['trainable']:,} of {p['total']:,} "
              f"parameters trainable ({p['trainable_pct']:.4f}%), {len(setup_.splits['train'])} training examples, "
              f"{accelerator.num_processes} process(es), {cfg.train.precision}", flush=True)
    accelerator.wait_for_everyone()


def prepare_run_dir(run_dir: Path, cfg: RunConfig, force: bool) -> None:
    """Refuses to mix a different config into an unfinished run; --force starts the run over."""
    if force:
        rundir.clear_outputs(run_dir)
        return
    previous = _saved_config(run_dir)
    if previous and previous != dataclasses.asdict(cfg):
        raise MedsumError(f"output_dir {run_dir} holds an unfinished run with a different {rundir.CONFIG}; "
                          f"use another output_dir, or --force to start over")


def _saved_config(run_dir: Path) -> dict:
    """The unfinished run's config.yaml, with settings medsum gained since it was written filled in by their defaults
    (a run begun before an upgrade resumes, as the defaults keep its behaviour); as written when it no longer loads."""
    tree = rundir.read_config(run_dir)
    if not tree:
        return {}
    try:
        return config_to_dict(config_from_dict(tree, str(run_dir / rundir.CONFIG)))
    except MedsumError:
        return tree


def finish(setup_: Setup, progress: Progress, summary: dict, rows: list[dict], seconds: float,
           generated: int) -> dict | None:
    """Saves weights, predictions and metrics.json (main process); returns the metrics there, None elsewhere."""
    accelerator, run_dir = setup_.accelerator, setup_.cfg.run_dir
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    weight_bytes = save_weights(setup_, run_dir)
    metrics = write_results(setup_, run_dir, progress, summary, rows, seconds, generated, weight_bytes)
    PartialPredictions(run_dir, "").remove()  # predictions.jsonl holds them all now
    shutil.rmtree(run_dir / rundir.CHECKPOINTS, ignore_errors=True)
    accelerator.wait_for_everyone()
    print("test " + "  ".join(f"{k} {summary[k]:.2f}" for k in ROUGE_KEYS) + f"  -> {run_dir}", flush=True)
    return metrics
