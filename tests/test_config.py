"""Config: defaults, YAML + dotted overrides, validation errors (all at once, naming the key), help text coverage."""

from __future__ import annotations

import dataclasses

import pytest

from medsum.config import (
    RunConfig,
    all_keys,
    config_to_dict,
    help_lines,
    load_run_config,
    parse_override,
    save_run_config,
)
from medsum.errors import MedsumError

# The keys issue 2 lists (acceptance/lib/checks.py: config_keys); --help and the README must name each.
ISSUE_2_KEYS = (
    "name seed output_dir model.name data.path data.source_field data.target_field data.prefix "
    "data.max_source_tokens data.max_target_tokens data.max_train_examples data.max_eval_examples method.name "
    "method.r method.alpha method.dropout method.target_modules method.num_virtual_tokens method.init "
    "method.init_text train.learning_rate train.epochs train.max_steps train.batch_size train.grad_accum "
    "train.warmup_ratio train.weight_decay train.max_grad_norm train.precision train.gradient_checkpointing "
    "train.eval_every train.early_stopping_patience generate.num_beams generate.length_penalty "
    "generate.no_repeat_ngram_size generate.min_new_tokens generate.max_new_tokens"
).split()


def config_error(*overrides: str, path=None) -> str:
    with pytest.raises(MedsumError) as info:
        load_run_config(path, list(overrides))
    return str(info.value)


def test_defaults_follow_the_study_settings():
    cfg = load_run_config(None, [])
    assert cfg.method.name == "lora"
    assert (cfg.method.r, cfg.method.alpha, cfg.method.dropout, cfg.method.target_modules) == (16, 32, 0.1, None)
    assert (cfg.data.source_field, cfg.data.target_field, cfg.data.prefix) == ("article", "abstract", None)
    assert (cfg.data.max_source_tokens, cfg.data.max_target_tokens) == (1024, 256)
    assert (cfg.data.max_train_examples, cfg.data.max_eval_examples) == (None, None)
    g = cfg.generate
    assert (g.num_beams, g.length_penalty, g.no_repeat_ngram_size, g.min_new_tokens, g.max_new_tokens) == \
        (4, 2.0, 3, 30, 256)
    t = cfg.train
    assert (t.learning_rate, t.warmup_ratio, t.weight_decay, t.max_grad_norm, t.precision) == \
        (None, 0.1, 0.01, 1.0, "auto")
    assert cfg.run_name == "lora-s42"
    assert str(cfg.run_dir) == "runs/lora-s42"


def test_prompt_tuning_defaults():
    cfg = load_run_config(None, ["method.name=prompt_tuning"])
    assert (cfg.method.num_virtual_tokens, cfg.method.init) == (20, "text")
    assert cfg.method.init_text.strip()


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\nmethod:\n  name: lora\n  r: 8\ntrain:\n  learning_rate: 1e-3\n  max_steps: 5\n")
    cfg = load_run_config(path, ["train.max_steps=7", "method.target_modules=[q,k,v,o]", "data.max_eval_examples=null"])
    assert cfg.seed == 3 and cfg.method.r == 8
    assert cfg.train.learning_rate == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string: converted
    assert isinstance(cfg.train.learning_rate, float)
    assert cfg.train.max_steps == 7  # the override wins over the file
    assert cfg.method.target_modules == ["q", "k", "v", "o"]
    assert cfg.data.max_eval_examples is None


def test_override_values_are_parsed_as_yaml():
    assert parse_override("train.max_steps=12") == ("train.max_steps", 12)
    assert parse_override("train.gradient_checkpointing=true") == ("train.gradient_checkpointing", True)
    assert parse_override("data.max_train_examples=null") == ("data.max_train_examples", None)
    assert parse_override("method.target_modules=[q, v]") == ("method.target_modules", ["q", "v"])
    assert parse_override("data.prefix=") == ("data.prefix", "")
    assert parse_override("name=a=b") == ("name", "a=b")
    cfg = load_run_config(None, ["method.target_modules=q,v", "data.prefix="])
    assert cfg.method.target_modules == ["q", "v"]
    assert cfg.data.prefix == ""


def test_override_without_equals_is_refused():
    with pytest.raises(MedsumError, match="key=value"):
        parse_override("train.max_steps")


def test_unknown_key_suggests_the_nearest():
    message = config_error("train.learnin_rate=1")
    assert "train.learnin_rate" in message
    assert "did you mean train.learning_rate?" in message


def test_unknown_top_level_key_suggests_the_nearest():
    assert "did you mean seed?" in config_error("seeds=3")
    assert "unknown config key trian" in config_error("trian.max_steps=3")


def test_misspelled_section_suggests_the_full_key():
    message = config_error("trian.max_steps=3")
    assert "trian.max_steps" in message
    assert "did you mean train.max_steps?" in message


def test_unknown_method_names_the_known_ones():
    message = config_error("method.name=lorra")
    assert "method.name" in message and "'lorra'" in message
    assert "lora" in message and "prompt_tuning" in message and "full" in message


@pytest.mark.parametrize("override, key", [
    ("method.r=0", "method.r"),
    ("train.learning_rate=-1", "train.learning_rate"),
    ("train.learning_rate=0", "train.learning_rate"),
    ("train.warmup_ratio=1", "train.warmup_ratio"),
    ("train.precision=fp8", "train.precision"),
    ("generate.num_beams=0", "generate.num_beams"),
    ("data.max_eval_examples=0", "data.max_eval_examples"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("method.dropout=1", "method.dropout"),
    ("model.dropout=1", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("method.target_modules=[]", "method.target_modules"),
])
def test_out_of_range_values_name_the_key(override, key):
    assert key in config_error(override)


def test_prompt_tuning_values_are_validated():
    message = config_error("method.name=prompt_tuning", "method.num_virtual_tokens=0", "method.init=zeros")
    assert "method.num_virtual_tokens" in message and "method.init" in message


@pytest.mark.parametrize("override, want", [
    ("train.max_steps=abc", "train.max_steps: expected an integer"),
    ("train.learning_rate=fast", "train.learning_rate: expected a number"),
    ("train.gradient_checkpointing=3", "train.gradient_checkpointing: expected true or false"),
    ("train.batch_size=true", "train.batch_size: expected an integer"),
    ("seed=null", "seed: must not be null"),
    ("train=5", "train: expected a mapping"),
])
def test_wrong_types_name_the_key(override, want):
    assert want in config_error(override)


def test_key_of_another_method_is_refused():
    message = config_error("method.name=full", "method.r=8")
    assert "method.r is not a setting of method full" in message
    message = config_error("method.name=prompt_tuning", "method.target_modules=[q]")
    assert "method.target_modules is not a setting of method prompt_tuning" in message
    assert "num_virtual_tokens" in message  # names the settings it does have


def test_broken_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 3\nname: a\ntrain: x: y\n")  # line 3: a mapping value where none is allowed
    message = config_error(path=path)
    assert "bad.yaml" in message
    assert "line 3" in message
    assert "\n" not in message


def test_broken_yaml_names_the_line_where_the_problem_starts(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 3\nmodel: [unclosed\n")
    assert "line 2" in config_error(path=path)


def test_config_file_must_be_a_mapping_and_exist(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "mapping" in config_error(path=path)
    assert "not found" in config_error(path=tmp_path / "missing.yaml")


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_run_config(path, []) == load_run_config(None, [])


def test_several_errors_are_reported_at_once():
    message = config_error("train.learnin_rate=1", "generate.beams=2", "train.max_steps=abc")
    assert "train.learnin_rate" in message and "generate.beams" in message and "train.max_steps" in message
    message = config_error("method.r=0", "train.learning_rate=-1", "generate.num_beams=0")
    assert "method.r" in message and "train.learning_rate" in message and "generate.num_beams" in message


def test_unknown_keys_and_bad_values_are_reported_together():
    message = config_error("train.learnin_rate=1", "method.r=0", "train.learning_rate=-1")
    assert "train.learnin_rate" in message
    assert "method.r" in message
    assert "train.learning_rate must be > 0" in message


def test_help_lines_cover_every_key_with_its_default():
    rows: dict[str, tuple[str, str]] = {}
    for key, default, text in help_lines():  # a key several methods declare (method.r): the first, LoRA's
        rows.setdefault(key, (default, text))
    assert set(rows) == set(all_keys())
    assert set(ISSUE_2_KEYS) <= set(rows)
    assert all(text.strip() for _, text in rows.values()), "every key has help text"
    assert rows["generate.num_beams"][0] == "4"
    assert rows["generate.length_penalty"][0] == "2.0"
    assert rows["train.learning_rate"][0] == "null"
    assert rows["method.r"][0] == "16"
    assert rows["method.name"][0] == "lora"
    assert rows["data.source_field"][0] == "article"
    assert rows["train.gradient_checkpointing"][0] == "false"


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_run_config(None, ["method.name=prompt_tuning", "seed=5", "train.learning_rate=0.01"])
    save_run_config(cfg, tmp_path)
    again = load_run_config(tmp_path / "config.yaml", [])
    assert config_to_dict(again) == config_to_dict(cfg)
    assert dataclasses.is_dataclass(again) and isinstance(again, RunConfig)
