"""The search: the `search:` block refused naming the key, seeded suggestions, resume without retraining a finished
trial, failed trials, the grid trained with each method's choice, and one real tiny search with its report."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest
import yaml

from conftest import DATA
from medsum import rundir, study
from medsum.errors import MedsumError
from medsum.study.spec import expand, spec_from_dict

SPACE = {"train.learning_rate": {"log_uniform": [1.0e-4, 1.0e-1]}}


def spec_dict(trials: int = 3, seed: int = 1, **search) -> dict:
    return {"name": "tuned", "base": {"model": {"name": "tiny"}}, "grid": {"method.name": ["lora", "prompt_tuning"]},
            "seeds": [1, 2], "search": {"trials": trials, "metric": "rouge1", "seed": seed, "space": SPACE, **search}}


# ---------------------------------------------------------------------------------------------- the block


@pytest.mark.parametrize("search, needle", [
    ({"space": {"train.learning_rate": {"log_uniform": [0, 1.0e-2]}}},
     "search.space.train.learning_rate: log_uniform needs [low, high] with 0 < low < high"),
    ({"space": {"train.learning_rate": {"log_uniform": [1.0e-2, 1.0e-3]}}},
     "search.space.train.learning_rate: log_uniform needs [low, high] with 0 < low < high"),
    ({"space": {"train.warmup_ratio": {"uniform": [0.2]}}}, "search.space.train.warmup_ratio: uniform needs"),
    ({"space": {"train.batch_size": {"int": [2.5, 8]}}}, "search.space.train.batch_size: int needs [low, high], "
                                                         "integers"),
    ({"space": {"train.batch_size": {"choice": []}}}, "search.space.train.batch_size: choice needs a non-empty"),
    ({"space": {"train.learning_rate": {"normal": [0, 1]}}}, "search.space.train.learning_rate: expected one "
                                                              "distribution"),
    ({"space": {"train.learning_rat": {"uniform": [0, 1]}}}, "search.space.train.learning_rat: unknown config key "
                                                             "train.learning_rat; did you mean train.learning_rate?"),
    ({"space": {"method.name": {"choice": ["lora", "full"]}}}, "search.space.method.name: cannot be searched"),
    ({"space": {"seed": {"int": [1, 4]}}}, "search.space.seed: cannot be searched"),
    ({"methods": {"prompt_tuning": {"method.r": {"int": [2, 8]}}}},
     "search.methods.prompt_tuning.method.r: method.r is not a setting of method prompt_tuning"),
    ({"methods": {"lora_plus": {}}}, "search.methods: unknown method 'lora_plus'"),
    ({"metric": "test_rouge1"}, "search.metric: 'test_rouge1': the search selects on the validation split only"),
    ({"metric": "bleu"}, "search.metric: expected a validation metric"),
    ({"trials": 0}, "search.trials: expected the number of trials per method"),
    ({"seed": -1}, "search.seed: expected an integer"),
    ({"budget": 3}, "search.budget: unknown"),
    ({"space": {}}, "search.space: give at least one key to search"),
])
def test_bad_search_blocks_are_refused_naming_the_key(search, needle):
    with pytest.raises(MedsumError) as err:
        spec_from_dict(spec_dict(**search), "study.yaml")
    assert needle in str(err.value)
    assert str(err.value).startswith("study.yaml: ")


def test_a_searched_key_the_grid_sets_too_is_refused():
    spec = spec_dict()
    spec["grid"]["train.learning_rate"] = [1e-3, 1e-2]
    with pytest.raises(MedsumError, match="search.space.train.learning_rate: also a grid key"):
        spec_from_dict(spec, "study.yaml")


def test_a_space_value_the_config_refuses_is_named_before_anything_runs(tmp_path):
    from medsum.study.tuning import plan_searches

    spec = spec_from_dict(spec_dict(space={"train.batch_size": {"uniform": [1, 8]}}), "study.yaml")
    with pytest.raises(MedsumError, match=r"search.space.train.batch_size: value 3.59 gives an invalid run config "
                                          r"\(train.batch_size: expected an integer"):
        plan_searches(spec, [], tmp_path)  # uniform draws floats
    spec = spec_from_dict(spec_dict(space={"train.warmup_ratio": {"uniform": [0.5, 1.5]}}), "study.yaml")
    with pytest.raises(MedsumError, match=r"search.space.train.warmup_ratio: value 1.5 gives an invalid run config"):
        plan_searches(spec, [], tmp_path)


def test_method_spaces_replace_the_shared_entry_and_method_keys_go_to_their_methods():
    spec = spec_from_dict(spec_dict(space={**SPACE, "method.r": {"choice": [4, 8]}},
                                    methods={"prompt_tuning": {"train.learning_rate": {"log_uniform": [1e-3, 1.0]}}}),
                          "s.yaml").search
    assert set(spec.space_of("lora")) == {"train.learning_rate", "method.r"}
    assert set(spec.space_of("prompt_tuning")) == {"train.learning_rate"}
    assert spec.space_of("prompt_tuning")["train.learning_rate"].values == (1e-3, 1.0)
    assert spec.seed == 1 and spec.trials == 3 and spec.metric == "rouge1"


def test_one_search_per_grid_variant_in_the_documented_folders(tmp_path):
    from medsum.study.tuning import plan_searches

    targets = plan_searches(spec_from_dict(spec_dict(), "s.yaml"), [], tmp_path)
    assert [t.name for t in targets] == ["tiny/lora", "tiny/prompt_tuning"]
    assert targets[0].folder == tmp_path / "runs" / "search" / "tiny" / "lora"
    cfg = targets[0].trial_config(2, {"train.learning_rate": 0.003})
    assert cfg.seed == 1 and cfg.train.learning_rate == 0.003 and cfg.train.validate_lone_candidate
    assert cfg.run_dir == tmp_path / "runs" / "search" / "tiny" / "lora" / "trial-2"


def test_the_grid_takes_the_choice_and_a_point_without_one_has_no_runs(tmp_path):
    from medsum.study.search import point_key

    spec = spec_from_dict(spec_dict(), "s.yaml")
    lora, prompt = (point_key(["method.name"], {"method.name": m}) for m in ("lora", "prompt_tuning"))
    runs = expand(spec, [], tmp_path, tuned={lora: {"search": "tiny/lora", "trial": 1, "params":
                                                    {"train.learning_rate": 0.002}, "value": 9.0}, prompt: None})
    assert sorted(r.name for r in runs) == ["tiny__lora__s1", "tiny__lora__s2"]
    assert {r.config.train.learning_rate for r in runs} == {0.002}
    assert runs[0].membership("tuned")["tuned"]["trial"] == 1


def test_sweeps_start_from_the_first_grid_point_with_its_chosen_values(tmp_path):
    from medsum.study.search import point_key

    spec = spec_dict()
    spec["sweeps"] = {"rank": {"method.name": "lora", "method.r": [4, 16]}}
    spec = spec_from_dict(spec, "s.yaml")
    lora, prompt = (point_key(["method.name"], {"method.name": m}) for m in ("lora", "prompt_tuning"))
    choice = {"search": "tiny/lora", "trial": 0, "params": {"train.learning_rate": 0.004}, "value": 9.0}
    runs = {r.name: r for r in expand(spec, [], tmp_path, tuned={lora: choice, prompt: {**choice, "params": {
        "train.learning_rate": 0.2}}})}
    assert runs["tiny__lora__r4__s1"].config.train.learning_rate == 0.004
    assert runs["tiny__prompt_tuning__s2"].config.train.learning_rate == 0.2


# ---------------------------------------------------------------------------------------------- the search, fast


def fake_train(calls: list, fail: set[str] = frozenset(), stop_after: int | None = None):
    """A stand-in for medsum.train.run: validation ROUGE-1 peaks at a learning rate of 1e-2.5; ``stop_after``
    calls, it interrupts the study as a kill would (the trial it was training is left RUNNING)."""

    def run(cfg, force=False, show_progress=True, place=None):
        if stop_after is not None and len(calls) >= stop_after:
            raise KeyboardInterrupt
        calls.append(str(cfg.run_dir))
        rundir.write_config(cfg.run_dir, {"seed": cfg.seed, "model": {"name": cfg.model.name}, "method": {
            "name": cfg.method.name}, "train": {"learning_rate": cfg.train.learning_rate}})
        if cfg.run_dir.name in fail or cfg.run_dir.relative_to(cfg.run_dir.parents[1]).as_posix() in fail:
            raise RuntimeError("simulated crash")
        lr = cfg.train.learning_rate or 1e-3
        score = 30.0 - 5 * abs(math.log10(lr) + 2.5) + (0.1 if cfg.method.name == "lora" else 0.0)
        scores = {"rouge1": score, "rouge2": 1.0, "rougeL": 5.0, "rougeLsum": 6.0}
        rundir.write_predictions(cfg.run_dir, [{"id": "a", **scores}])
        return rundir.write_metrics(cfg.run_dir, rundir.Metrics(
            model=cfg.model.name, method=cfg.method.name, method_config={}, seed=cfg.seed,
            params={"trainable": 10, "total": 100, "trainable_pct": 10.0}, validation={"rouge1": score},
            test=scores, efficiency={"train_seconds": 1.5}))

    return run


def write_spec(path: Path, **kwargs) -> Path:
    path.write_text(yaml.safe_dump(spec_dict(**kwargs)))
    return path


def optuna_record(out: Path) -> dict[str, list[tuple[int, str, float]]]:
    """study name -> (number, state, learning rate) of each trial, read straight from the SQLite file."""
    con = sqlite3.connect(out / "search.db")
    rows = con.execute("SELECT s.study_name, t.number, t.state, p.param_value FROM trials t JOIN studies s ON "
                       "s.study_id = t.study_id LEFT JOIN trial_params p ON p.trial_id = t.trial_id "
                       "ORDER BY s.study_name, t.number").fetchall()
    con.close()
    record: dict[str, list] = {}
    for name, number, state, lr in rows:
        record.setdefault(name, []).append((number, state, lr))
    return record


def learning_rates(out: Path, method: str) -> list[float]:
    folder = out / "runs" / "search" / "tiny" / method
    configs = [rundir.read_config(folder / f"trial-{n}") for n in range(len(list(folder.glob("trial-*"))))]
    return [c["train"]["learning_rate"] for c in configs]


def test_a_search_chooses_by_validation_and_the_grid_runs_every_seed_with_it(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    out = tmp_path / "out"
    statuses = study.run_study(write_spec(tmp_path / "s.yaml"), out, [], show_progress=False)
    assert sorted(statuses) == ["tiny__lora__s1", "tiny__lora__s2", "tiny__prompt_tuning__s1",
                                "tiny__prompt_tuning__s2"]
    record = optuna_record(out)
    assert sorted(record) == ["tiny/lora", "tiny/prompt_tuning"]
    for method in ("lora", "prompt_tuning"):
        assert [(n, s) for n, s, _ in record[f"tiny/{method}"]] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
        lrs = learning_rates(out, method)
        assert [lr for _, _, lr in record[f"tiny/{method}"]] == pytest.approx(lrs, rel=1e-12)
        best = min(lrs, key=lambda lr: abs(math.log10(lr) + 2.5))  # the fake's best validation ROUGE-1
        for seed in (1, 2):
            assert rundir.read_config(out / "runs" / f"tiny__{method}__s{seed}")["train"]["learning_rate"] == best
            tuned = json.loads((out / "runs" / f"tiny__{method}__s{seed}" / "study.json").read_text())["tuned"]
            assert tuned["params"] == {"train.learning_rate": best} and tuned["search"] == f"tiny/{method}"
    assert len(calls) == 6 + 4
    summary = (out / "report" / "summary.md").read_text()
    assert "## Search: every method tuned with the same budget" in summary
    assert "Selection used validation data only" in summary
    for lr in learning_rates(out, "lora"):
        assert f"train.learning_rate={lr:.4g}" in summary
    assert (out / "report" / "search_train_learning_rate.png").is_file()
    status = study.status_table(out)
    assert "search: 6 trials, 6 done" in status and "lora/trial-2" in status
    # the same command again trains nothing
    calls.clear()
    study.run_study(tmp_path / "s.yaml", out, [], show_progress=False)
    assert calls == []


def test_the_same_seed_suggests_the_same_values_and_another_seed_others(tmp_path, monkeypatch):
    monkeypatch.setattr("medsum.train.run", fake_train([]))
    for name, seed in (("a", 1), ("b", 1), ("c", 7)):
        study.run_study(write_spec(tmp_path / f"{name}.yaml", trials=4, seed=seed), tmp_path / name, [],
                        show_progress=False)
    first = learning_rates(tmp_path / "a", "lora")
    assert len(set(first)) == 4 and all(1e-4 <= lr <= 1e-1 for lr in first)
    assert learning_rates(tmp_path / "b", "lora") == first
    assert learning_rates(tmp_path / "c", "lora") != first


def test_an_interrupted_search_resumes_without_retraining_a_finished_trial(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "s.yaml", trials=4)
    monkeypatch.setattr("medsum.train.run", fake_train([]))
    study.run_study(spec, tmp_path / "whole", [], show_progress=False)
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls, stop_after=3))
    with pytest.raises(KeyboardInterrupt):
        study.run_study(spec, tmp_path / "out", [], show_progress=False)
    record = optuna_record(tmp_path / "out")
    # LoRA's trial 2 was asked for and waited for its turn; prompt tuning's trial 1 was training
    assert [s for _, s, _ in record["tiny/lora"]] == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert [s for _, s, _ in record["tiny/prompt_tuning"]] == ["COMPLETE", "RUNNING"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("runs/search/*/*/trial-*/metrics.json")}
    assert len(stamps) == 3
    calls.clear()
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    study.run_study(spec, tmp_path / "out", [], show_progress=False)
    trained = sorted(Path(c).relative_to(tmp_path / "out" / "runs").as_posix() for c in calls)
    assert [c for c in trained if c.startswith("search/")] == [
        "search/tiny/lora/trial-2", "search/tiny/lora/trial-3", "search/tiny/prompt_tuning/trial-1",
        "search/tiny/prompt_tuning/trial-2", "search/tiny/prompt_tuning/trial-3"]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    for method in ("lora", "prompt_tuning"):  # the same values as the search that was never interrupted
        assert learning_rates(tmp_path / "out", method) == learning_rates(tmp_path / "whole", method)
        assert [s for _, s, _ in optuna_record(tmp_path / "out")[f"tiny/{method}"]] == ["COMPLETE"] * 4


def test_a_failed_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls, fail={"lora/trial-1"}))
    out = tmp_path / "out"
    study.run_study(write_spec(tmp_path / "s.yaml"), out, [], show_progress=False)
    assert [s for _, s, _ in optuna_record(out)["tiny/lora"]] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert rundir.error_message(out / "runs" / "search" / "tiny" / "lora" / "trial-1").endswith("simulated crash")
    lrs = learning_rates(out, "lora")
    chosen = rundir.read_config(out / "runs" / "tiny__lora__s1")["train"]["learning_rate"]
    assert chosen in (lrs[0], lrs[2])
    assert re.search(r"tiny/lora/trial-1 +failed .*train.learning_rate=.*simulated crash", study.status_table(out))
    assert "failed: RuntimeError: simulated crash" in (out / "report" / "summary.md").read_text()
    calls.clear()
    study.run_study(tmp_path / "s.yaml", out, [], show_progress=False)
    assert calls == []  # a failed trial counts against the budget: the rerun trains nothing


def test_a_search_whose_trials_all_failed_stops_its_grid_and_starts_over_next_time(tmp_path, monkeypatch):
    calls: list[str] = []
    crash = {f"lora/trial-{n}" for n in range(2)}
    monkeypatch.setattr("medsum.train.run", fake_train(calls, fail=crash))
    out = tmp_path / "out"
    with pytest.raises(MedsumError, match="every trial of the search tiny/lora failed"):
        study.run_study(write_spec(tmp_path / "s.yaml", trials=2), out, [], show_progress=False)
    assert not (out / "runs" / "tiny__lora__s1").exists()
    assert rundir.is_finished(out / "runs" / "tiny__prompt_tuning__s2")
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    study.run_study(tmp_path / "s.yaml", out, [], show_progress=False)
    assert [s for _, s, _ in optuna_record(out)["tiny/lora"]] == ["COMPLETE", "COMPLETE"]
    assert rundir.is_finished(out / "runs" / "tiny__lora__s1")


def test_compare_defaults_runs_the_untuned_grid_and_reports_tuned_against_default(tmp_path, monkeypatch):
    monkeypatch.setattr("medsum.train.run", fake_train([]))
    out = tmp_path / "out"
    statuses = study.run_study(write_spec(tmp_path / "s.yaml", trials=2, compare_defaults=True), out, [],
                               show_progress=False)
    assert "tiny__lora__default__s1" in statuses and len(statuses) == 8
    assert rundir.read_config(out / "runs" / "tiny__lora__default__s2")["train"]["learning_rate"] is None
    summary = (out / "report" / "summary.md").read_text()
    assert "### Tuned against default settings" in summary and "| lora tuned | lora default |" in summary


class RecordingPool:
    """A pool that trains with the fake in order and records when runs were submitted and collected."""

    def __init__(self, train):
        self.train, self.queue, self.events = train, [], []

    def submit(self, key, cfg):
        self.events.append(("submit", key, cfg.run_dir.name))
        self.queue.append((key, cfg))

    def next_done(self):
        key, cfg = self.queue.pop(0)
        self.events.append(("done", key, cfg.run_dir.name))
        self.train(cfg)
        return key, "done"


def test_searches_of_different_methods_are_in_flight_together_and_each_one_trial_at_a_time(tmp_path):
    from medsum.study.tuning import plan_searches, run_searches

    spec = spec_from_dict(spec_dict(trials=2), "s.yaml")
    pool = RecordingPool(fake_train([]))
    run_searches(spec, plan_searches(spec, [], tmp_path), tmp_path, pool)
    assert pool.events[:3] == [("submit", "tiny/lora", "trial-0"), ("submit", "tiny/prompt_tuning", "trial-0"),
                               ("done", "tiny/lora", "trial-0")]  # both methods' first trials were out at once
    for name in ("tiny/lora", "tiny/prompt_tuning"):
        mine = [(kind, trial) for kind, key, trial in pool.events if key == name]
        assert mine == [("submit", "trial-0"), ("done", "trial-0"), ("submit", "trial-1"), ("done", "trial-1")]


# ---------------------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_real_tiny_search_trains_trials_and_grid(tmp_path):
    import torch

    if not DATA.is_dir():
        pytest.fail(f"no sample data at {DATA}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = {"name": "real", "base": {"model": {"name": "tiny"}, "data": {
                    "path": str(DATA), "max_train_examples": 8, "max_eval_examples": 2, "max_source_tokens": 128},
                    "train": {"max_steps": 2, "batch_size": 4},
                    "generate": {"num_beams": 1, "max_new_tokens": 8, "min_new_tokens": 1}},
                "grid": {"method.name": ["lora"]}, "seeds": [1],
                "search": {"trials": 2, "seed": 3, "space": SPACE}}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
        study.run_study(tmp_path / "s.yaml", tmp_path / "out", [], show_progress=False)
    finally:
        torch.set_num_threads(threads)
    trials = [json.loads((tmp_path / "out" / "runs" / "search" / "tiny" / "lora" / f"trial-{n}" / "metrics.json")
                         .read_text()) for n in range(2)]
    assert all(isinstance(t["validation"]["rouge1"], float) for t in trials)  # validated once, at the last step
    best = max(range(2), key=lambda n: trials[n]["validation"]["rouge1"])
    lrs = learning_rates(tmp_path / "out", "lora")
    assert rundir.read_config(tmp_path / "out" / "runs" / "tiny__lora__s1")["train"]["learning_rate"] == lrs[best]


@pytest.mark.slow
def test_under_ray_the_searches_of_different_methods_run_side_by_side(tmp_path):
    # no skip: `make test` installs the ray extra, so a missing Ray is a failure here, not a silent pass
    if not DATA.is_dir():
        pytest.fail(f"no sample data at {DATA}")
    spec = {"name": "ray", "base": {"model": {"name": "tiny"}, "data": {
                "path": str(DATA), "max_train_examples": 8, "max_eval_examples": 2, "max_source_tokens": 128},
                "train": {"max_steps": 2, "batch_size": 4},
                "generate": {"num_beams": 1, "max_new_tokens": 8, "min_new_tokens": 1}},
            "grid": {"method.name": ["lora", "prompt_tuning"]}, "seeds": [1],
            "search": {"trials": 2, "seed": 3, "space": SPACE}, "ray": {"num_cpus": 0.5}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    study.run_study(tmp_path / "s.yaml", tmp_path / "out", [], executor="ray", show_progress=False)
    record = optuna_record(tmp_path / "out")
    assert {name: [s for _, s, _ in trials] for name, trials in record.items()} == {
        "tiny/lora": ["COMPLETE"] * 2, "tiny/prompt_tuning": ["COMPLETE"] * 2}
    assert rundir.is_finished(tmp_path / "out" / "runs" / "tiny__prompt_tuning__s1")
