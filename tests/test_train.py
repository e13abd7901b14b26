"""One training run end to end (issue 2) and its efficiency figures (issue 3), on the tiny model and real data.

The runs are trained once per session (conftest.tiny_runs: 2 steps, 8 training and 3 test examples, one seed per
method) and inspected here."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml
from rouge_score import rouge_scorer

from conftest import METHOD_SEEDS, read_jsonl, tiny_overrides, tiny_run_config
from medsum import evaluation, measures, rundir, train
from medsum.accounting import count_for_config
from medsum.cli import main
from medsum.config import load_run_config, save_run_config
from medsum.errors import MedsumError
from medsum.evaluate import score_example
from medsum.train import loop

METHODS = ("lora", "prompt_tuning", "full")
ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
LEARNING_RATES = {"lora": 3e-4, "prompt_tuning": 3e-2, "full": 5e-5}  # MISSION.md; tiny counts as small
TRAINABLE = {"lora": 12 * 16 * (64 + 64), "prompt_tuning": 20 * 64}  # q,v in 6 attentions at r=16; 20 x d_model
N_TEST = 3


def metrics_of(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------- the run directory


@pytest.mark.parametrize("method", METHODS)
def test_run_directory_layout(tiny_runs, method):
    run_dir = tiny_runs[method]
    for name in ("config.yaml", "metrics.json", "predictions.jsonl", "train_log.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tokenizer" / "tokenizer_config.json").is_file()
    assert (run_dir / "base_model" / "config.json").is_file()  # the tiny base travels with the run
    if method == "full":
        assert (run_dir / "model" / "config.json").is_file()
        assert (run_dir / "model" / "model.safetensors").is_file()
        assert not (run_dir / "adapter").exists()
    else:
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
        assert not (run_dir / "model").exists()
    assert not (run_dir / "checkpoints").exists()
    assert not list(run_dir.glob(".*")), "no temporary files left behind"


@pytest.mark.parametrize("method", METHODS)
def test_config_yaml_is_fully_resolved(tiny_runs, method):
    run_dir = tiny_runs[method]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["prefix"] == "summarize: "
    assert saved["train"]["learning_rate"] == pytest.approx(LEARNING_RATES[method])
    assert saved["train"]["precision"] == "fp32"
    assert saved["seed"] == METHOD_SEEDS[method]
    assert saved["name"] == f"{method}-s{METHOD_SEEDS[method]}"
    assert saved["output_dir"] == str(run_dir)
    assert saved["method"]["name"] == method
    if method == "lora":
        assert saved["method"]["target_modules"] == ["q", "v"]
    assert load_run_config(run_dir / "config.yaml", []).train.learning_rate == pytest.approx(LEARNING_RATES[method])


@pytest.mark.parametrize("method", METHODS)
def test_metrics_json_fields(tiny_runs, method):
    metrics = metrics_of(tiny_runs[method])
    assert {"model", "method", "method_config", "seed", "params", "validation", "test", "efficiency", "hardware",
            "rouge", "versions", "status"} <= set(metrics)
    assert (metrics["model"], metrics["method"], metrics["seed"], metrics["status"]) == \
        ("tiny", method, METHOD_SEEDS[method], "done")
    assert {*ROUGE, "gen_len", "empty_predictions", "examples"} <= set(metrics["test"])
    assert metrics["test"]["examples"] == N_TEST
    assert 1 <= metrics["test"]["gen_len"] <= 16  # generate.max_new_tokens
    if method == "lora":  # its run sets train.validate_lone_candidate=true
        assert {*ROUGE, "best_step"} <= set(metrics["validation"])
        assert (metrics["validation"]["best_step"], metrics["validation"]["evaluations"]) == (2, 1)
    else:  # two steps in one epoch: the one validation would be at the last step, so it is skipped
        assert (metrics["validation"]["best_step"], metrics["validation"]["evaluations"]) == (2, 0)
        assert "validate_lone_candidate" in metrics["validation"]["skipped"]
    assert metrics["rouge"]["use_stemmer"] is True
    assert metrics["hardware"]["count"] == 1 and metrics["hardware"]["device"]
    assert {"torch", "transformers", "peft", "rouge-score"} <= set(metrics["versions"])
    if method == "lora":
        assert metrics["method_config"]["resolved_target_modules"] == ["q", "v"]
        assert metrics["method_config"]["r"] == 16
    if method == "prompt_tuning":
        assert metrics["method_config"]["num_virtual_tokens"] == 20


@pytest.mark.parametrize("method", METHODS)
def test_params_are_counted_by_the_accounting_code(tiny_runs, method, data_dir):
    params = metrics_of(tiny_runs[method])["params"]
    if method == "full":
        assert params["trainable"] == params["total"] == params["base"]
    else:
        assert params["trainable"] == TRAINABLE[method]
        assert params["total"] == params["base"] + params["trainable"]
    assert params["trainable_pct"] == pytest.approx(100 * params["trainable"] / params["total"])
    meta = count_for_config(tiny_run_config(tiny_runs[method], method))
    assert (meta["base_params"], meta["trainable_params"], meta["total_params"]) == \
        (params["base"], params["trainable"], params["total"])


# ---------------------------------------------------------------------------------------------- honest ROUGE


@pytest.mark.parametrize("method", METHODS)
def test_predictions_hold_the_first_test_rows_with_full_references(tiny_runs, method, test_rows, tiny_tokenizer):
    predictions = read_jsonl(tiny_runs[method] / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [r["id"] for r in test_rows[:N_TEST]]
    assert [p["reference"] for p in predictions] == [r["abstract"] for r in test_rows[:N_TEST]]
    for p in predictions:
        assert {"id", "prediction", "reference", *ROUGE} <= set(p)
        assert isinstance(p["prediction"], str)
    # the labels were truncated at 64 tokens; the references scored must be the whole abstracts
    assert max(len(tiny_tokenizer(p["reference"])["input_ids"]) for p in predictions) > 64


def test_every_seed_is_tested_on_the_same_examples(tiny_runs):
    ids = {m: [p["id"] for p in read_jsonl(tiny_runs[m] / "predictions.jsonl")] for m in METHODS}
    assert len({metrics_of(tiny_runs[m])["seed"] for m in METHODS}) == 3
    assert ids["lora"] == ids["prompt_tuning"] == ids["full"]


@pytest.mark.parametrize("method", METHODS)
def test_test_rouge_is_the_mean_of_predictions_and_matches_rouge_score(tiny_runs, method, test_rows):
    test = metrics_of(tiny_runs[method])["test"]
    predictions = read_jsonl(tiny_runs[method] / "predictions.jsonl")
    full_abstracts = {r["id"]: r["abstract"] for r in test_rows}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for key in ROUGE:
        assert test[key] == pytest.approx(sum(p[key] for p in predictions) / len(predictions), abs=1e-9)
    for p in predictions:
        want = scorer.score(full_abstracts[p["id"]], p["prediction"])
        for key in ("rouge1", "rouge2", "rougeL"):
            assert p[key] == pytest.approx(100 * want[key].fmeasure, abs=1e-9)
        assert p["rougeLsum"] == pytest.approx(score_example((full_abstracts[p["id"]], p["prediction"]))["rougeLsum"])
    assert test["empty_predictions"] == sum(1 for p in predictions if not p["prediction"].strip())


@pytest.mark.parametrize("method", METHODS)
def test_predictions_carry_the_measures_against_their_article_and_metrics_their_means(tiny_runs, method, test_rows):
    test = metrics_of(tiny_runs[method])["test"]
    predictions = read_jsonl(tiny_runs[method] / "predictions.jsonl")
    articles = {r["id"]: r["article"] for r in test_rows}
    for p in predictions:
        assert p["measures"] == pytest.approx(measures.measure(p["prediction"], articles[p["id"]]))
    assert set(test["measures"]) == set(measures.MEASURES)
    words = [p["measures"]["words"] for p in predictions]
    assert test["measures"]["words"] == pytest.approx(sum(words) / len(words))


@pytest.mark.parametrize("method", METHODS)
def test_train_log(tiny_runs, method):
    log = read_jsonl(tiny_runs[method] / "train_log.jsonl")
    steps = [row for row in log if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2]
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in steps)
    assert all(row["world_size"] == 1 for row in steps)
    # linear schedule, 1 warm-up step of 2; each line logs the rate its step trained at: warm-up from 0, then peak
    assert [row["learning_rate"] for row in steps] == pytest.approx([0.0, LEARNING_RATES[method]])
    validations = [row for row in log if row.get("event") == "validation"]
    if method != "lora":  # only the lora run validates its lone candidate
        assert validations == []
        return
    assert [row["step"] for row in validations] == [2]
    assert validations[0]["validation_rouge1"] == pytest.approx(metrics_of(tiny_runs[method])["validation"]["rouge1"])


# ---------------------------------------------------------------------------------------------- efficiency (issue 3)


@pytest.mark.parametrize("method", METHODS)
def test_efficiency_figures_are_positive(tiny_runs, method):
    efficiency = metrics_of(tiny_runs[method])["efficiency"]
    for key in ("train_seconds", "train_tokens_per_second", "peak_memory_bytes", "eval_seconds",
                "generate_tokens_per_second", "adapter_bytes"):
        assert isinstance(efficiency[key], (int, float)) and efficiency[key] > 0, key
    assert efficiency["precision"] == "fp32"
    saved = "model/model.safetensors" if method == "full" else "adapter/adapter_model.safetensors"
    weights = tiny_runs[method] / saved
    assert efficiency["adapter_bytes"] == weights.stat().st_size


def test_train_tokens_count_real_tokens_only(tiny_runs, tiny_splits, tiny_tokenizer):
    """2 steps x batch 4 = each of the 8 training examples once: their source and label tokens, no padding."""
    from medsum.data import tokenize

    efficiency = metrics_of(tiny_runs["lora"])["efficiency"]
    encoded = tokenize(tiny_splits["train"], tiny_tokenizer, "summarize: ", 128, 64)
    real = sum(len(r["input_ids"]) + len(r["labels"]) for r in encoded)
    assert efficiency["train_tokens_per_second"] * efficiency["train_seconds"] == pytest.approx(real, rel=1e-9)


# ---------------------------------------------------------------------------------------------- saved weights


def test_lora_adapter_loads_with_peft_and_changes_the_output(tiny_runs):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    run_dir = tiny_runs["lora"]
    base = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "base_model").eval()
    inputs = torch.tensor([[5, 6, 7, 8, 1]])
    decoder = torch.tensor([[0, 9, 10]])
    with torch.no_grad():
        plain = base(input_ids=inputs, decoder_input_ids=decoder).logits
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 12 and all(p.abs().sum() > 0 for p in lora_b), "trained lora_B weights were saved"
    with torch.no_grad():
        adapted = model(input_ids=inputs, decoder_input_ids=decoder).logits
    assert not torch.allclose(plain, adapted)


def test_prompt_tuning_adapter_holds_only_the_encoder_prompt(tiny_runs):
    from safetensors.torch import load_file

    tensors = load_file(tiny_runs["prompt_tuning"] / "adapter" / "adapter_model.safetensors")
    assert {name: tuple(t.shape) for name, t in tensors.items()} == {"prompt_embeddings": (20, 64)}


def test_full_model_is_saved_untied_and_trained(tiny_runs):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    run_dir = tiny_runs["full"]
    trained = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "model")
    base = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "base_model")
    assert trained.lm_head.weight is not trained.shared.weight
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)
    assert not torch.equal(trained.shared.weight, base.shared.weight)


# ---------------------------------------------------------------------------------------------- finished runs


def test_finished_run_is_not_retrained(tiny_runs, capsys):
    run_dir = tiny_runs["lora"]
    before = (run_dir / "metrics.json").stat()
    assert train.run(tiny_run_config(run_dir, "lora", f"seed={METHOD_SEEDS['lora']}"), show_progress=False) is None
    argv = ["train", *tiny_overrides(run_dir, "lora", f"seed={METHOD_SEEDS['lora']}")]
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    after = (run_dir / "metrics.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


class Retrained(Exception):
    pass


def test_force_retrains_a_finished_run(tiny_runs, monkeypatch):
    def refuse(cfg, show_progress=False, place=None):
        raise Retrained

    monkeypatch.setattr(train, "setup", refuse)
    cfg = tiny_run_config(tiny_runs["lora"], "lora", f"seed={METHOD_SEEDS['lora']}")
    assert train.run(cfg, show_progress=False) is None
    with pytest.raises(Retrained):
        train.run(cfg, force=True, show_progress=False)
    calls = []
    monkeypatch.setattr(train, "run", lambda cfg, force, show_progress: calls.append(force))
    assert main(["train", "--force", "--quiet", *tiny_overrides(tiny_runs["lora"], "lora")]) == 0
    assert calls == [True]


def test_unfinished_run_with_another_config_is_refused(tmp_path):
    cfg = tiny_run_config(tmp_path, "lora")
    save_run_config(tiny_run_config(tmp_path, "lora", "train.max_steps=9"), tmp_path)
    with pytest.raises(MedsumError, match="different config.yaml"):
        train.prepare_run_dir(tmp_path, cfg, force=False)
    save_run_config(cfg, tmp_path)
    train.prepare_run_dir(tmp_path, cfg, force=False)  # the same config resumes
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "checkpoints" / "step-2").mkdir(parents=True)
    train.prepare_run_dir(tmp_path, cfg, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # --force removes only medsum's outputs


def test_an_unfinished_run_from_before_new_settings_resumes(tmp_path):
    """config.yaml written before medsum gained settings (here evaluate.* and LoRA's init) lacks them: their defaults
    fill in, so the run resumes; a saved value that differs is still refused."""
    cfg = tiny_run_config(tmp_path, "lora")
    tree = dataclasses.asdict(cfg)
    del tree["evaluate"], tree["method"]["init"]
    rundir.write_config(tmp_path, tree)
    train.prepare_run_dir(tmp_path, cfg, force=False)
    tree["train"]["max_steps"] += 1
    rundir.write_config(tmp_path, tree)
    with pytest.raises(MedsumError, match="different config.yaml"):
        train.prepare_run_dir(tmp_path, cfg, force=False)


@pytest.mark.parametrize("override, message", [
    ("data.path=/nonexistent/medsum-data", "no such file"),
    ("model.name=/nonexistent/medsum-model", "model.name"),
])
def test_bad_input_writes_nothing(tmp_path, override, message):
    run_dir = tmp_path / "run"
    with pytest.raises(MedsumError, match=message):
        train.run(tiny_run_config(run_dir, "lora", override), show_progress=False)
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------- model selection


@pytest.mark.parametrize(("overrides", "steps", "per_epoch", "expected"), [
    ([], 6, 2, {2, 4, 6}),  # every epoch
    (["train.eval_every=4"], 10, 2, {4, 8, 10}),  # every 4 steps, and the last
    ([], 5, 8, set()),  # one validation at the last step only: nothing to select, skipped
    (["train.validate_lone_candidate=true"], 5, 8, {5}),
    (["train.eval_every=50"], 20, 8, set()),
])
def test_scheduled_validations(overrides, steps, per_epoch, expected):
    cfg = load_run_config(None, overrides)
    assert loop.scheduled_validations(cfg, steps, per_epoch) == expected


def test_best_validation_checkpoint_is_tested_and_early_stopping_stops(tmp_path, monkeypatch):
    """Validation ROUGE-1 50 at step 2, then 10 at step 4: patience 1 stops there, and the step-2 weights are the
    ones saved and tested."""
    import torch
    from safetensors.torch import load_file

    from medsum import checkpoint as ckpt

    snapshots = []

    def scripted_validate(setup_, model):
        snapshots.append(ckpt.trainable_state(setup_.accelerator.unwrap_model(model)))
        score = [50.0, 10.0, 5.0][len(snapshots) - 1]
        return {key: score for key in ROUGE}

    monkeypatch.setattr(evaluation, "validate", scripted_validate)
    cfg = tiny_run_config(tmp_path, "lora", "train.max_steps=6", "train.early_stopping_patience=1",
                          "generate.num_beams=1")
    metrics = train.run(cfg, show_progress=False)
    assert metrics["stopped_early"] is True
    assert (metrics["validation"]["best_step"], metrics["validation"]["rouge1"]) == (2, 50.0)
    assert metrics["validation"]["evaluations"] == 2
    assert [row["step"] for row in read_jsonl(tmp_path / "train_log.jsonl") if "loss" in row] == [1, 2, 3, 4]
    saved = {name.replace(".weight", ".default.weight"): value
             for name, value in load_file(tmp_path / "adapter" / "adapter_model.safetensors").items()}
    best, last = snapshots
    assert set(saved) == set(best)
    assert all(torch.equal(saved[name], best[name]) for name in best)
    assert not all(torch.equal(saved[name], last[name]) for name in last)


def test_fp16_is_refused_for_t5(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(MedsumError, match="fp16"):
        train.run(tiny_run_config(run_dir, "lora", "train.precision=fp16"), show_progress=False)
    assert not run_dir.exists()


def test_a_test_pass_killed_half_way_resumes_with_its_predictions(tmp_path, monkeypatch):
    """The test pass appends each finished batch to test_predictions.partial.jsonl; started again, the run reuses
    them, generates only the rest and ends with exactly the predictions of an uninterrupted run."""
    from medsum import evaluate
    from medsum.partial_predictions import PARTIAL_FILE

    extra = ("data.max_eval_examples=10", "generate.batch_size=3", "generate.num_beams=2", "seed=5")
    clean = train.run(tiny_run_config(tmp_path / "clean", "lora", *extra), show_progress=False)
    assert clean["test"]["reused_predictions"] == 0
    generate_batch, calls = evaluate._generate_batch, []

    def crash_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return generate_batch(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_generate_batch", crash_on_the_third_batch)
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_run_config(crashed, "lora", *extra), show_progress=False)
    assert len(read_jsonl(crashed / PARTIAL_FILE)) == 6 and not (crashed / "metrics.json").exists()
    monkeypatch.setattr(evaluate, "_generate_batch", generate_batch)
    resumed = train.run(tiny_run_config(crashed, "lora", *extra), show_progress=False)
    assert resumed["test"]["reused_predictions"] == 6
    assert read_jsonl(crashed / "predictions.jsonl") == read_jsonl(tmp_path / "clean" / "predictions.jsonl")
    assert resumed["test"]["rouge1"] == clean["test"]["rouge1"]
    assert not (crashed / PARTIAL_FILE).exists()


def test_partial_predictions_of_other_weights_are_not_reused(tmp_path):
    from medsum.partial_predictions import PartialPredictions

    old = PartialPredictions(tmp_path, "weights-a")
    old.append([(0, "id-0", "a summary", 3), (1, "id-1", "another", 2)])
    with open(old.path, "a") as handle:
        handle.write('{"key": "weights-a", "index": 2, "predi')  # torn by the crash
    assert old.load() == {0: ("a summary", 3), 1: ("another", 2)}
    assert PartialPredictions(tmp_path, "weights-b").load() == {}
