"""Studies: grid expansion, validation before anything runs, the lock, executors, resume, and one real tiny study."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from medsum import rundir, study
from medsum.cli import main
from medsum.errors import MedsumError
from medsum.study.spec import expand, model_short_name, spec_from_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sumpubmed"
TINY_OVERRIDES = ["train.max_steps=2", "data.max_train_examples=8", "data.max_eval_examples=2",
                  "data.max_source_tokens=128", "generate.max_new_tokens=16", "generate.min_new_tokens=1"]


def plan(spec: dict, overrides=(), output: Path = Path("/tmp/out")):
    return expand(spec_from_dict(spec, "study.yaml"), list(overrides), output)


def by_name(runs):
    return {run.name: run for run in runs}


# ---------------------------------------------------------------------------------------------- expansion


def test_grid_is_the_cartesian_product_over_seeds_with_readable_names():
    runs = plan({"base": {"model": {"name": "tiny"}}, "seeds": [1, 2],
                 "grid": {"method.name": ["lora", "full"], "train.learning_rate": [1e-4, 2e-4]}})
    names = by_name(runs)
    assert len(runs) == 8
    assert "tiny__lora__lr0.0001__s1" in names and "tiny__full__lr0.0002__s2" in names
    assert names["tiny__full__lr0.0002__s2"].config.train.learning_rate == 2e-4
    assert names["tiny__full__lr0.0002__s2"].config.seed == 2
    assert str(names["tiny__lora__lr0.0001__s1"].config.run_dir) == "/tmp/out/runs/tiny__lora__lr0.0001__s1"
    assert all(run.grid and not run.sweeps for run in runs)


def test_model_names_are_shortened_for_run_names():
    assert model_short_name("google/flan-t5-large") == "flan-t5-large"
    assert model_short_name("/data/models/my t5/") == "my-t5"
    runs = plan({"grid": {"model.name": ["google/flan-t5-small", "google/flan-t5-base"]}, "seeds": [3]})
    assert sorted(by_name(runs)) == ["flan-t5-base__lora__s3", "flan-t5-small__lora__s3"]


def test_methods_overrides_apply_to_their_method_and_the_grid_wins():
    runs = by_name(plan({"grid": {"method.name": ["lora", "full"]}, "seeds": [1],
                         "methods": {"full": {"train.learning_rate": 3e-5, "train.batch_size": 2}}}))
    assert runs["tiny__full__s1"].config.train.learning_rate == 3e-5
    assert runs["tiny__lora__s1"].config.train.learning_rate is None
    assert runs["tiny__lora__s1"].config.train.batch_size == 8
    grid_wins = by_name(plan({"grid": {"method.name": ["full"], "train.batch_size": [4, 16]}, "seeds": [1],
                              "methods": {"full": {"train.batch_size": 2}}}))
    assert sorted(r.config.train.batch_size for r in grid_wins.values()) == [4, 16]


def test_sweeps_start_from_the_first_grid_point_and_deduplicate():
    runs = plan({"base": {"data": {"path": "d"}}, "seeds": [1, 2],
                 "grid": {"model.name": ["tiny", "google/flan-t5-small"], "method.name": ["lora", "full"]},
                 "sweeps": {"lora_rank": {"method.name": "lora", "method.r": [4, 16]}}})
    names = by_name(runs)
    assert len(runs) == 2 * 2 * 2 + 2  # r=16 is the grid's own LoRA point: trained once
    assert names["tiny__lora__r4__s1"].config.method.r == 4
    assert names["tiny__lora__r4__s1"].config.model.name == "tiny"  # the grid's first model
    assert not names["tiny__lora__r4__s1"].grid
    shared = names["tiny__lora__s2"]
    assert shared.grid and shared.sweeps == {"lora_rank": {"key": "method.r", "value": 16}}


def test_the_acceptance_study_has_eight_runs():
    spec = {"name": "bar-study", "base": {"model": {"name": "tiny"}, "data": {"path": "d", "max_train_examples": 24}},
            "grid": {"method.name": ["lora", "full"]}, "seeds": [1, 2],
            "sweeps": {"lora_rank": {"method.name": "lora", "method.r": [2, 4]}}}
    assert sorted(by_name(plan(spec))) == [
        "tiny__full__s1", "tiny__full__s2", "tiny__lora__r2__s1", "tiny__lora__r2__s2", "tiny__lora__r4__s1",
        "tiny__lora__r4__s2", "tiny__lora__s1", "tiny__lora__s2"]


def test_method_keys_of_other_methods_are_dropped_so_their_runs_collapse():
    runs = plan({"grid": {"method.name": ["lora", "full"], "method.r": [8, 16]}, "seeds": [1]})
    assert sorted(by_name(runs)) == ["tiny__full__s1", "tiny__lora__r16__s1", "tiny__lora__r8__s1"]


def test_command_line_overrides_reach_every_run():
    runs = plan({"grid": {"method.name": ["lora", "prompt_tuning"]}, "seeds": [1, 2]},
                overrides=[("train.max_steps", 3)])
    assert {run.config.train.max_steps for run in runs} == {3}


def test_the_example_study_expands_to_the_published_design():
    runs = expand(study.load_spec(Path(__file__).parents[1] / "examples" / "pubmed-flan-t5.yaml"), [], Path("/o"))
    grid = [r for r in runs if r.grid]
    assert len(grid) == 3 * 3 * 5
    assert len(runs) == 45 + 4 * 5 + 4 * 5  # each sweep's 5 values include the grid's (r=16, 20 tokens)
    names = by_name(runs)
    assert names["flan-t5-small__prompt_tuning__pt100__s5"].config.method.num_virtual_tokens == 100
    assert names["flan-t5-large__lora__s1"].sweeps == {}  # sweeps run around the first model only
    assert names["flan-t5-small__lora__s1"].sweeps == {"lora_rank": {"key": "method.r", "value": 16}}


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("spec, needle", [
    ({"grid": {"method.rank": [4, 8]}}, "method.rank; did you mean method.r?"),
    ({"sweeps": {"s": {"method.r": [4], "method.alpha": [8, 16]}}}, "exactly one key must be a list"),
    ({"methods": {"lorra": {"train.learning_rate": 1e-3}}}, "unknown method 'lorra'"),
    ({"methods": {"full": {"train.learnin_rate": 1e-3}}}, "methods.full: unknown config key train.learnin_rate"),
    ({"grid": {"seed": [1, 2]}}, "seed is set by the study"),
    ({"gird": {"method.name": ["lora"]}}, "unknown study key 'gird'"),
    ({"base": {"data": {"pth": "x"}}}, "base: unknown config key data.pth"),
    ({"grid": {"method.name": ["lora"], "method.r": [0, 4]}}, "method.r must be >= 1, got 0"),
    ({"grid": {"method.name": ["full"], "method.num_virtual_tokens": [5, 10]}}, "applies to no run"),
    ({"seeds": "one"}, "seeds: expected a list of integers"),
    ({"baselines": ["lead", "leed"]}, "baselines: unknown baseline 'leed' (known: lead, lexrank, textrank, oracle)"),
    ({"baselines": ["oracle", "oracle"]}, "baselines: repeated baseline"),
    ({"baselines": ["lead"], "base": {"evaluate": {"nli_model": "/no/such/dir"}}},
     "evaluate.nli_model: no directory /no/such/dir"),
])
def test_bad_specs_are_refused_naming_the_problem(spec, needle):
    with pytest.raises(MedsumError, match=None) as caught:
        plan({"seeds": [1], **spec})
    assert needle in str(caught.value)


def test_baselines_take_the_base_data_settings_and_the_overrides_of_that_section(tmp_path):
    from medsum.study import plan_baselines

    spec = spec_from_dict({"base": {"data": {"path": "d", "max_eval_examples": 5}}, "baselines": ["lead", "oracle"]},
                          "study.yaml")
    planned = plan_baselines(spec, [("data.max_eval_examples", 3), ("train.max_steps", 2)], tmp_path)
    assert [(b.name, b.run_dir) for b in planned] == [("lead", tmp_path / "runs" / "baseline__lead"),
                                                      ("oracle", tmp_path / "runs" / "baseline__oracle")]
    assert planned[0].data.path == "d" and planned[0].data.max_eval_examples == 3


def test_an_unknown_override_is_refused():
    with pytest.raises(MedsumError, match="train.max_stesp"):
        plan({"seeds": [1]}, overrides=[("train.max_stesp", 2)])


def test_cli_refuses_a_bad_grid_in_one_line_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", "base": {"model": {"name": "tiny"}},
                                    "grid": {"method.rank": [4, 8]}, "seeds": [1]}))
    assert main(["study", "run", str(spec), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "method.rank" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- lock and executors


def fake_train(calls: list, fail: set[str] = frozenset(), stop: set[str] = frozenset(), places: list | None = None):
    """A stand-in for medsum.train.run that writes what the report reads, in milliseconds; the runs in ``stop``
    end as a stop signal ends them (Preempted, after a checkpoint)."""
    import signal

    from medsum.preemption import Preempted

    def run(cfg, force=False, show_progress=True, place=None):
        calls.append(cfg.name)
        if places is not None:
            places.append(place)
        if cfg.name in fail:
            raise RuntimeError("simulated crash")
        if cfg.name in stop:
            raise Preempted(signal.SIGTERM, 3, str(cfg.run_dir / "checkpoints" / "step-3"))
        rundir.write_config(cfg.run_dir, {"seed": cfg.seed, "model": {"name": cfg.model.name},
                                          "method": {"name": cfg.method.name}})
        scores = {"rouge1": 10.0 + cfg.seed, "rouge2": 1.0, "rougeL": 5.0, "rougeLsum": 6.0}
        rundir.write_predictions(cfg.run_dir, [{"id": "a", **scores}])
        return rundir.write_metrics(cfg.run_dir, rundir.Metrics(
            model=cfg.model.name, method=cfg.method.name, method_config={}, seed=cfg.seed,
            params={"trainable": 10, "total": 100, "trainable_pct": 10.0}, test=scores))

    return run


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "fake", "base": {"model": {"name": "tiny"}},
                                    "grid": {"method.name": ["lora", "full"]}, "seeds": [1, 2]}))
    return path


def test_a_failed_run_does_not_stop_the_others_and_is_retried(spec_file, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls, fail={"tiny__full__s1"}))
    out = tmp_path / "out"
    with pytest.raises(MedsumError, match="1 of 4 runs failed"):
        study.run_study(spec_file, out, [], show_progress=False)
    assert len(calls) == 4
    assert (out / "runs" / "tiny__full__s1" / "error.txt").read_text().startswith("RuntimeError: simulated crash")
    assert "tiny__full__s1" in study.status_table(out) and "failed" in study.status_table(out)
    assert "simulated crash" in (out / "report" / "summary.md").read_text()
    calls.clear()
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    study.run_study(spec_file, out, [], show_progress=False)
    assert calls == ["tiny__full__s1"]  # only the failed run trains again
    assert not (out / "runs" / "tiny__full__s1" / "error.txt").exists()
    assert "4 done" in study.status_table(out)


def test_a_stopped_run_is_interrupted_not_failed_and_resumes(spec_file, tmp_path, monkeypatch):
    from medsum.preemption import Preempted

    calls: list[str] = []
    places: list = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls, stop={"tiny__full__s2"}, places=places))
    out = tmp_path / "out"
    with pytest.raises(Preempted):
        study.run_study(spec_file, out, [], show_progress=False)
    assert calls[-1] == "tiny__full__s2"  # the signal stopped the study at this run
    table = study.status_table(out)
    assert "1 interrupted" in table and "tiny__full__s2  interrupted" in table and "SIGTERM after step 3" in table
    assert "0 failed" in table.splitlines()[0]
    assert not (out / "runs" / "tiny__full__s2" / "error.txt").exists()
    # every run of the study logs to one experiment named after it, with its store in the study directory
    assert {(p.experiment, p.store_dir) for p in places} == {("fake", out.resolve())}
    calls.clear()
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    study.run_study(spec_file, out, [], show_progress=False)
    assert "tiny__full__s2" in calls and "4 done" in study.status_table(out)
    assert not (out / "runs" / "tiny__full__s2" / rundir.INTERRUPTED).exists()


def test_a_locked_study_directory_is_refused(spec_file, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    out = tmp_path / "out"
    with study.study_lock(out):
        assert study.is_locked(out)
        with pytest.raises(MedsumError, match="is locked: another `medsum study run`"):
            study.run_study(spec_file, out, [], show_progress=False)
    assert calls == [] and not study.is_locked(out)
    study.run_study(spec_file, out, [], show_progress=False)
    assert len(calls) == 4


def test_a_stale_running_marker_is_not_running(spec_file, tmp_path, monkeypatch):
    monkeypatch.setattr("medsum.train.run", fake_train([]))
    out = tmp_path / "out"
    study.run_study(spec_file, out, [], show_progress=False)
    run_dir = out / "runs" / "tiny__lora__s1"
    (run_dir / rundir.METRICS).unlink()
    rundir.atomic_write_json(run_dir / rundir.RUNNING, {"pid": os.getpid(), "host": os.uname().nodename})
    assert "tiny__lora__s1  running" in study.status_table(out)
    rundir.atomic_write_json(run_dir / rundir.RUNNING, {"pid": 2 ** 22 + 1, "host": os.uname().nodename})
    assert "tiny__lora__s1  pending" in study.status_table(out)


def test_status_of_a_folder_without_a_study_is_an_error(tmp_path):
    with pytest.raises(MedsumError, match="holds no study"):
        study.status_table(tmp_path)


def test_without_ray_the_ray_executor_is_refused_before_anything_is_written(spec_file, tmp_path, monkeypatch):
    def no_ray():
        raise MedsumError("--executor ray needs Ray, an optional extra: pip install 'medsum[ray]'")

    monkeypatch.setattr("medsum.study.executors.import_ray", no_ray)
    with pytest.raises(MedsumError, match="medsum\\[ray\\]"):
        study.run_study(spec_file, tmp_path / "out", [], executor="ray", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_ray_resources_default_to_one_gpu_when_the_cluster_has_one():
    from medsum.study.executors import task_resources

    assert task_resources({"CPU": 8, "GPU": 2}, {}) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert task_resources({"CPU": 8}, {}) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert task_resources({"GPU": 2}, {"num_gpus": 0.25}) == {"num_cpus": 1.0, "num_gpus": 0.25}


# ---------------------------------------------------------------------------------------------- a real tiny study


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a toy model: threads only add waiting on a shared CPU
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real_study(tmp_path_factory, one_thread):
    if not DATA.is_dir():
        pytest.skip(f"no sample data at {DATA}")
    root = tmp_path_factory.mktemp("real-study")
    spec = root / "study.yaml"
    spec.write_text(yaml.safe_dump({"name": "real", "base": {"model": {"name": "tiny"}, "data": {"path": str(DATA)}},
                                    "grid": {"method.name": ["lora", "full"]}, "seeds": [1]}))
    statuses = study.run_study(spec, root / "out", TINY_OVERRIDES, show_progress=False)
    return spec, root / "out", statuses


def test_a_real_study_writes_its_runs_and_report(real_study):
    _, out, statuses = real_study
    assert statuses == {"tiny__lora__s1": "done", "tiny__full__s1": "done"}
    for name in statuses:
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        assert metrics["method"] == name.split("__")[1]
        membership = json.loads((out / "runs" / name / "study.json").read_text())
        assert membership == {"study": "real", "grid": True, "sweeps": {}}
    summary = (out / "report" / "summary.md").read_text()
    assert "| tiny | lora |" in summary and "| tiny | full |" in summary
    assert (out / "report" / "methods_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "report" / "sweep_lora_rank.png").exists()  # no sweep, no sweep plot


def test_running_the_same_study_again_trains_nothing(real_study, monkeypatch):
    spec, out, _ = real_study
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    study.run_study(spec, out, TINY_OVERRIDES, show_progress=False)
    assert calls == []
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.json")}


def test_the_ray_executor_gives_the_same_results_as_local(real_study, tmp_path):
    # no skip: `make test` installs the ray extra, so a missing Ray is a failure here, not a silent pass
    spec, local, _ = real_study
    study.run_study(spec, tmp_path / "ray", TINY_OVERRIDES, executor="ray", show_progress=False)
    for metrics in local.glob("runs/*/metrics.json"):
        other = tmp_path / "ray" / "runs" / metrics.parent.name / "metrics.json"
        assert json.loads(other.read_text())["test"] == json.loads(metrics.read_text())["test"]


def test_baselines_are_runs_of_the_study_written_once(spec_file, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("medsum.train.run", fake_train(calls))
    tree = yaml.safe_load(spec_file.read_text())
    spec_file.write_text(yaml.safe_dump({**tree, "baselines": ["lead", "oracle"]}))
    out, data = tmp_path / "out", [f"data.path={DATA}", "data.max_train_examples=8", "data.max_eval_examples=1"]
    statuses = study.run_study(spec_file, out, data, show_progress=False)
    assert statuses["baseline__lead"] == statuses["baseline__oracle"] == "done" and len(calls) == 4
    membership = json.loads((out / "runs" / "baseline__lead" / "study.json").read_text())
    assert membership["baseline"] == "lead"
    table = study.status_table(out)
    assert "6 runs, 6 done" in table and "baseline__oracle  done" in table
    summary = (out / "report" / "summary.md").read_text()
    assert "| extractive | lead |" in summary and "| extractive | oracle (extractive upper bound) |" in summary
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/baseline__*/metrics.json")}
    study.run_study(spec_file, out, data, show_progress=False)  # a rerun writes no baseline again
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("runs/baseline__*/metrics.json")}


def test_a_failed_baseline_is_recorded_and_retried(spec_file, tmp_path, monkeypatch):
    monkeypatch.setattr("medsum.train.run", fake_train([]))
    tree = yaml.safe_load(spec_file.read_text())
    spec_file.write_text(yaml.safe_dump({**tree, "baselines": ["lead"]}))
    out = tmp_path / "out"
    with pytest.raises(MedsumError, match="1 of 5 runs failed \\(baseline__lead\\)"):
        study.run_study(spec_file, out, [f"data.path={tmp_path / 'missing'}"], show_progress=False)
    assert (out / "runs" / "baseline__lead" / "error.txt").is_file()
    assert "baseline__lead  failed" in study.status_table(out)


def test_the_demo_is_a_study_file_shipped_in_the_package(tmp_path):
    from medsum.study.demo import DEMO_STUDY, demo_spec_dict

    assert DEMO_STUDY.name == "demo.yaml" and DEMO_STUDY.parent == Path(study.__file__).parent
    tree = demo_spec_dict(tmp_path / "data")
    assert tree["base"]["data"]["path"] == str(tmp_path / "data")
    runs = expand(spec_from_dict(tree, str(DEMO_STUDY)), [], tmp_path / "out")
    assert len(runs) == 14  # 3 methods x 2 seeds, and 2 new values x 2 seeds in each of the two sweeps
    assert {run.config.method.name for run in runs} == {"lora", "prompt_tuning", "full"}
    assert "tiny__lora__r64__s2" in {run.name for run in runs}
    assert {run.config.train.learning_rate for run in runs if run.config.method.name == "full"} == {1e-3}
    assert spec_from_dict(tree, str(DEMO_STUDY)).baselines == ["lead", "lexrank", "textrank", "oracle"]
