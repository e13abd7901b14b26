"""Experiment trackers (``train.report_to``: TensorBoard, MLflow, Weights & Biases) through Accelerate's trackers.

What a run logs, at the step it belongs to: ``train/loss``, ``train/learning_rate``, ``train/epoch`` and
``train/tokens_per_second`` on every ``train_log.jsonl`` line; ``validation/<rouge>`` at each validation; the test
metrics (``test/<rouge>``, ``test/gen_len``) at the last step; the resolved config (dotted keys) as parameters.
Where (``TrackingPlace``: a run's own directory, or its study's):
    tensorboard   RUN_DIR/tensorboard/ (event files; ``tensorboard --logdir STUDY_DIR/runs`` shows a study)
    mlflow        MLFLOW_TRACKING_URI when set, else the local SQLite store PLACE/mlflow.db (``mlflow ui
                  --backend-store-uri sqlite:///PLACE/mlflow.db``); experiment: the run's name, or the study's;
                  run tags: model, method, seed. A resumed run continues its MLflow run.
    wandb         project: the experiment name; files in RUN_DIR/wandb/; WANDB_MODE=offline is honoured
Trackers run on the main process only, and every call is made with the random number generators saved and
restored around it, so that tracking can never change what a run computes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum import checkpoint as ckpt
from medsum.config import RunConfig, config_to_dict
from medsum.errors import MedsumError
from medsum.settings import flatten

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name -> the module it needs
INSTALL_HINT = "pip install 'medsum[trackers]'"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_STORE = "mlflow.db"
WANDB_DIR = "wandb"
RUN_DIR_TAG = "medsum.run_dir"


@dataclass(frozen=True)
class TrackingPlace:
    """Where a run's trackers log: the experiment's name and the folder of the local MLflow store. A study passes
    its own (its name, its directory) so that all its runs are one experiment."""

    experiment: str
    store_dir: Path

    @classmethod
    def of_run(cls, cfg: RunConfig) -> TrackingPlace:
        return cls(cfg.run_name, cfg.run_dir)


def check_available(report_to: list[str]) -> None:
    """Refuses (naming train.report_to) a tracker whose package is not installed, before anything is written."""
    missing = [name for name in report_to if importlib.util.find_spec(TRACKERS[name]) is None]
    if missing:
        raise MedsumError(f"train.report_to: {', '.join(missing)} is not installed ({INSTALL_HINT}, or "
                          f"pip install {' '.join(TRACKERS[m] for m in missing)})")


def tracker_objects(cfg: RunConfig, place: TrackingPlace | None) -> list:
    """Accelerate tracker objects for ``cfg.train.report_to`` (not yet started)."""
    if not cfg.train.report_to:
        return []
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    place = place or TrackingPlace.of_run(cfg)
    tags = run_tags(cfg)
    made = {
        "tensorboard": lambda: TensorBoardTracker(TENSORBOARD_DIR, str(cfg.run_dir)),
        "mlflow": lambda: MLflowTracker(place.experiment, str(Path(place.store_dir).resolve() / "mlflow-artifacts"),
                                        tags=tags, run_name=cfg.run_name),
        "wandb": lambda: WandBTracker(place.experiment, name=cfg.run_name, dir=str(cfg.run_dir),
                                      tags=[f"{k}={v}" for k, v in tags.items() if k != RUN_DIR_TAG]),
    }
    return [made[name]() for name in dict.fromkeys(cfg.train.report_to)]


def run_tags(cfg: RunConfig) -> dict[str, str]:
    return {"model": cfg.model.name, "method": cfg.method.name, "seed": str(cfg.seed),
            RUN_DIR_TAG: str(cfg.run_dir.resolve())}


def config_params(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat parameters: dotted keys, lists as JSON, null as 'null'."""
    def plain(value: Any) -> Any:
        if value is None:
            return "null"
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    return {key: plain(value) for key, value in flatten(config_to_dict(cfg)).items()}


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Runs a block with every random number generator restored afterwards (a tracker drawing a random run name
    must not shift the run's dropout or data order)."""
    state = ckpt.rng_state()
    try:
        yield
    finally:
        ckpt.restore_rng_state(state)


class Trackers:
    """The run's trackers, held by its Accelerator (``log_with``): started once the first step is known, given
    the metrics as they come, and closed with the run's outcome."""

    def __init__(self, setup_, place: TrackingPlace | None = None):
        self.setup_ = setup_
        self.place = place
        self.active = bool(setup_ is not None and setup_.cfg.train.report_to)
        self.started = False
        self.last_step = 0

    @classmethod
    def none(cls) -> Trackers:
        return cls(None)

    def start(self, first_step: int) -> None:
        """Starts every tracker; a run resumed after ``first_step`` continues where its earlier attempt was."""
        if not self.active or self.started or not self.setup_.accelerator.is_main_process:
            return
        self.last_step = first_step
        cfg, accelerator = self.setup_.cfg, self.setup_.accelerator
        place = self.place or TrackingPlace.of_run(cfg)
        with preserved_rng():
            for tracker in accelerator.log_with:
                if tracker.name == "tensorboard" and first_step:
                    tracker.init_kwargs["purge_step"] = first_step + 1  # the earlier attempt's later steps go
                if tracker.name == "mlflow":
                    _point_mlflow_at(place)
                    tracker.run_id = tracker.run_id or (_unfinished_mlflow_run(place, cfg) if first_step else None)
            accelerator.init_trackers(place.experiment, config=config_params(cfg))
        self.started = True

    def log(self, values: dict[str, float], step: int) -> None:
        if self.started:
            self.last_step = max(self.last_step, step)
            with preserved_rng():
                self.setup_.accelerator.log(values, step=step)

    def log_test(self, summary: dict[str, Any]) -> None:
        """The test metrics (the numbers at the summary's top level), at the last step logged: W&B drops a step
        older than the newest it has seen."""
        self.log({f"test/{k}": float(v) for k, v in summary.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}, self.last_step)

    def close(self, outcome: str = "FINISHED") -> None:
        """Ends every tracker; ``outcome`` (FINISHED | KILLED | FAILED) is the MLflow run's status."""
        if not self.started:
            return
        with preserved_rng():
            for tracker in self.setup_.accelerator.trackers:
                if tracker.name == "mlflow":
                    import mlflow

                    mlflow.end_run(status=outcome)
                else:
                    tracker.finish()
            self.setup_.accelerator.trackers = []
        self.started = False


def _point_mlflow_at(place: TrackingPlace) -> None:
    """MLFLOW_TRACKING_URI when set, else the local SQLite store in the run's (or study's) directory."""
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        store = Path(place.store_dir).resolve()
        store.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{store / MLFLOW_STORE}")


def _unfinished_mlflow_run(place: TrackingPlace, cfg: RunConfig) -> str | None:
    """The MLflow run of an earlier, interrupted attempt of this run (same run directory), to continue it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(place.experiment)
    if experiment is None:
        return None
    run_dir = str(cfg.run_dir.resolve()).replace("'", "\\'")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs and runs[0].info.status != "FINISHED" else None
