"""``medsum evaluate``: a finished run's per-example measures (``medsum.measures``) recomputed from its
predictions.jsonl and the test split its config.yaml names, without regenerating; the optional model-based metrics
(``medsum.model_metrics``) too, where config.yaml's evaluate.* or the command line names a model. A run from before
the measures gains them; a run that has them gets them again (identical unless the measures' code changed). Nothing
else of predictions.jsonl or metrics.json changes: ROUGE, losses and the predictions themselves stay as the run
wrote them."""

from __future__ import annotations

from pathlib import Path

from medsum import measures, model_metrics, rundir
from medsum.errors import MedsumError


def rescore_run(run_dir: str | Path, evaluate: dict | None = None) -> dict:
    """Rewrites the run's predictions.jsonl (each row's "measures", and "model_metrics" when configured) and
    metrics.json (test["measures"], their means, and test["model_metrics"]), each atomically; returns the means.
    ``evaluate``: evaluate.* settings (bertscore_model, nli_model) over those of the run's config.yaml."""
    run_dir = Path(run_dir)
    metrics = rundir.read_json(run_dir / rundir.METRICS)
    if not metrics:
        raise MedsumError(f"{run_dir}: not a finished run (no readable {rundir.METRICS})")
    rows = rundir.read_jsonl(run_dir / rundir.PREDICTIONS)
    if not rows:
        raise MedsumError(f"{run_dir}: {rundir.PREDICTIONS} is missing or empty")
    if any("id" not in row for row in rows):
        raise MedsumError(f"{run_dir}: a row of {rundir.PREDICTIONS} has no id")
    sources = sources_by_id(run_dir, [str(row["id"]) for row in rows])
    rows = measures.add_measures(rows, sources)
    metrics["test"] = {**metrics.get("test", {}), "measures": measures.row_means(rows)}
    rows, metrics["test"] = model_metrics.add_model_metrics(rows, metrics["test"], sources,
                                                            evaluate_settings(run_dir, evaluate or {}))
    rundir.write_predictions(run_dir, rows)
    rundir.atomic_write_json(run_dir / rundir.METRICS, metrics)
    return metrics["test"]["measures"]


def sources_by_id(run_dir: Path, ids: list[str]) -> list[str]:
    """The source texts of the given test example ids, from the data settings of the run's config.yaml."""
    from medsum.config import config_from_dict
    from medsum.data import load_splits

    data = rundir.read_config(run_dir).get("data")
    if not data:
        raise MedsumError(f"{run_dir}: no data settings in {rundir.CONFIG}, so no test split to measure against")
    # only the data section: settings added or renamed elsewhere since the run must not stop its re-scoring
    cfg = config_from_dict({"data": data}, str(run_dir / rundir.CONFIG))
    sources = {str(e.id): e.source for e in load_splits(cfg.data)["test"]}
    missing = [i for i in ids if i not in sources]
    if missing:
        raise MedsumError(f"{run_dir}: test example {missing[0]!r} of {rundir.PREDICTIONS} is not in the test split "
                          f"of data.path={cfg.data.path} ({len(missing)} of {len(ids)} missing)")
    return [sources[i] for i in ids]


def evaluate_settings(run_dir: Path, overrides: dict):
    """The evaluate.* settings: the run's config.yaml (runs from before them have none), then ``overrides``."""
    from medsum.config import config_from_dict

    recorded = rundir.read_config(run_dir).get("evaluate") or {}
    given = {key: value for key, value in overrides.items() if value is not None}
    return config_from_dict({"evaluate": {**recorded, **given}}, "medsum evaluate").evaluate
