"""Models and parameter accounting (issue 3): the published Flan-T5 figures to the parameter, offline; untied lm_head
kept from a local checkpoint; the tiny model's layout."""

from __future__ import annotations

import json
import os

import pytest

from medsum.accounting import count_for_config
from medsum.cli import main
from medsum.config import load_run_config
from medsum.errors import MedsumError
from medsum.models import (
    checkpoint_has_own_lm_head,
    count_parameters,
    load_config,
    load_pretrained,
    meta_model,
)
from medsum.shipped_configs import shipped_config


def count(model: str, method: str, *overrides: str) -> dict:
    return count_for_config(load_run_config(None, [f"model.name={model}", f"method.name={method}", *overrides]))


def assert_figures(report: dict, base: int, trainable: int, total: int) -> None:
    assert (report["base_params"], report["trainable_params"], report["total_params"]) == (base, trainable, total)
    assert report["trainable_pct"] == pytest.approx(100 * trainable / total, abs=1e-9)


# (model, method, overrides, base, trainable): MISSION.md and issue 3's required figures
PUBLISHED = [
    ("google/flan-t5-small", "lora", (), 76_961_152, 688_128),
    ("google/flan-t5-base", "lora", (), 247_577_856, 1_769_472),
    ("google/flan-t5-large", "lora", (), 783_150_080, 4_718_592),
    ("google/flan-t5-large", "lora", ("method.r=64", "method.target_modules=[q,v]"), 783_150_080, 18_874_368),
    ("google/flan-t5-large", "prompt_tuning", ("method.num_virtual_tokens=20",), 783_150_080, 20_480),
    ("google/flan-t5-small", "prompt_tuning", ("method.num_virtual_tokens=100",), 76_961_152, 51_200),
]


@pytest.mark.parametrize("model, method, overrides, base, trainable", PUBLISHED,
                         ids=[f"{p[0].split('-')[-1]}-{p[1]}-{p[4]}" for p in PUBLISHED])
def test_published_flan_t5_figures(model, method, overrides, base, trainable):
    assert_figures(count(model, method, *overrides), base, trainable, base + trainable)


def test_lora_on_large_is_0599_percent_of_the_total():
    report = count("google/flan-t5-large", "lora")
    assert round(report["trainable_pct"], 3) == 0.599  # of base + adapters, not of the base (0.603)
    assert report["total_params"] == 787_868_672  # MISSION.md


def test_full_fine_tuning_trains_every_parameter():
    assert_figures(count("google/flan-t5-large", "full"), 783_150_080, 783_150_080, 783_150_080)


def test_params_cli_prints_json(capsys):
    assert main(["params", "model.name=google/flan-t5-base", "method.name=lora", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert_figures(report, 247_577_856, 1_769_472, 247_577_856 + 1_769_472)
    assert (report["model"], report["method"]) == ("google/flan-t5-base", "lora")


def test_params_cli_prints_a_table(capsys):
    assert main(["params", "model.name=google/flan-t5-small", "method.name=lora"]) == 0
    out = capsys.readouterr().out
    assert "76,961,152" in out and "688,128" in out


def test_shipped_configs_are_the_released_ones():
    config = shipped_config("google/flan-t5-large")
    assert (config.d_model, config.d_ff, config.num_heads, config.num_layers, config.vocab_size) == \
        (1024, 2816, 16, 24, 32128)
    assert config.feed_forward_proj == "gated-gelu"
    assert load_config("google/flan-t5-small").d_model == 512  # offline: the shipped facts


def test_meta_model_of_a_flan_t5_has_its_own_lm_head():
    model = meta_model("google/flan-t5-small")
    assert model.lm_head.weight is not model.shared.weight
    assert model.encoder.embed_tokens.weight is model.shared.weight  # the input embeddings stay shared
    assert next(model.parameters()).device.type == "meta"


def test_unknown_model_name_is_one_clear_error(tmp_path):
    with pytest.raises(MedsumError, match="model.name"):
        load_config("nobody/no-such-model")
    with pytest.raises(MedsumError, match="model.name"):
        load_config(str(tmp_path))  # a directory without config.json


# ---------------------------------------------------------------------------------------------- untied checkpoint


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory):
    """A local checkpoint whose weights carry their own lm_head (built as acceptance/3-accounting does)."""
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("untied")
    config = {"architectures": ["T5ForConditionalGeneration"], "d_ff": 64, "d_kv": 16, "d_model": 32,
              "decoder_start_token_id": 0, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
              "is_encoder_decoder": True, "model_type": "t5", "num_decoder_layers": 2, "num_heads": 2,
              "num_layers": 2, "pad_token_id": 0, "relative_attention_num_buckets": 8,
              "tie_word_embeddings": False, "vocab_size": 100}
    (folder / "config.json").write_text(json.dumps(config))
    model = T5ForConditionalGeneration(T5Config.from_pretrained(folder))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    state["lm_head.weight"] = torch.randn(100, 32)
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    true_count = sum(v.numel() for k, v in state.items() if not k.endswith("embed_tokens.weight"))
    return folder, state, true_count


def test_untied_local_checkpoint_is_counted_with_its_lm_head(untied_checkpoint):
    folder, _, true_count = untied_checkpoint
    assert checkpoint_has_own_lm_head(folder)
    assert_figures(count(str(folder), "full"), true_count, true_count, true_count)
    lora = count(str(folder), "lora", "method.r=4")
    assert lora["base_params"] == true_count
    # q and v (32 -> 2 heads x 16) in 2 encoder self, 2 decoder self and 2 decoder cross attentions: r x (32 + 32) each
    assert lora["trainable_params"] == 12 * 4 * (32 + 32)


def test_untied_local_checkpoint_loads_its_own_lm_head(untied_checkpoint):
    import torch

    folder, state, true_count = untied_checkpoint
    model = load_pretrained(str(folder))
    assert model.lm_head.weight is not model.shared.weight
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(model.shared.weight, state["shared.weight"])
    assert count_parameters(model)["total"] == true_count


def test_tied_local_checkpoint_is_counted_tied(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=1,
                      num_decoder_layers=1, feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    assert model.lm_head.weight is model.shared.weight
    model.save_pretrained(tmp_path)
    assert not checkpoint_has_own_lm_head(tmp_path)
    assert count(str(tmp_path), "full")["base_params"] == count_parameters(model)["total"]


# ---------------------------------------------------------------------------------------------- tiny model


def test_tiny_model_has_the_flan_t5_layout(tiny_source, tiny_tokenizer):
    model = load_pretrained(str(tiny_source))
    assert model.config.model_type == "t5"
    assert model.config.feed_forward_proj == "gated-gelu"
    assert model.lm_head.weight is not model.shared.weight
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert checkpoint_has_own_lm_head(tiny_source)
    assert (tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.unk_token_id) == (0, 1, 2)
    assert (model.config.pad_token_id, model.config.eos_token_id, model.config.decoder_start_token_id) == (0, 1, 0)
    assert model.config.vocab_size == len(tiny_tokenizer)
    assert tiny_tokenizer("hello")["input_ids"][-1] == 1  # eos appended, as T5's tokenizer does


def test_tiny_counts_agree_between_meta_and_loaded_model(data_dir, tiny_source):
    overrides = ["model.name=tiny", f"data.path={data_dir}", "data.max_train_examples=8", "data.max_eval_examples=3"]
    report = count_for_config(load_run_config(None, [*overrides, "method.name=full"]))
    loaded = count_parameters(load_pretrained(str(tiny_source)))["total"]
    assert report["base_params"] == report["trainable_params"] == loaded
    lora = count_for_config(load_run_config(None, [*overrides, "method.name=lora"]))
    # d_model 64, 4 heads x 16: q and v in 2 encoder + 2x2 decoder attentions, r=16 x (64 + 64) each
    assert lora["trainable_params"] == 12 * 16 * (64 + 64) == 24_576


def test_tiny_model_dir_is_cached(tiny_splits, tiny_source):
    from medsum.tiny_models import tiny_model_dir

    stamp = (tiny_source / "config.json").stat().st_mtime_ns
    again = tiny_model_dir([t for e in tiny_splits["train"] for t in (e.source, e.target)])
    assert again == tiny_source
    assert (tiny_source / "config.json").stat().st_mtime_ns == stamp


def test_hub_config_is_used_when_reachable_and_must_agree(monkeypatch):
    import transformers

    hub = shipped_config("google/flan-t5-small")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda name, **kwargs: hub)
    assert load_config("google/flan-t5-small") is hub
    different = shipped_config("google/flan-t5-small")
    different.d_ff = 2048
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda name, **kwargs: different)
    with pytest.raises(MedsumError, match="d_ff"):
        load_config("google/flan-t5-small")


def test_model_dropout_replaces_every_dropout_probability(tiny_source, tmp_path):
    """model.dropout sets the family's dropout keys: T5's dropout_rate reaches every nn.Dropout and attention; a
    BART's three dropout settings all change; null keeps the checkpoint's."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from medsum.models import load_pretrained

    assert load_pretrained(str(tiny_source)).config.dropout_rate == 0.0  # the tiny model's own
    model = load_pretrained(str(tiny_source), dropout=0.3)
    assert model.config.dropout_rate == 0.3
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert layers and all(m.p == 0.3 for m in layers)
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert attention.dropout == 0.3
    bart = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32))
    bart.save_pretrained(tmp_path / "bart")
    config = load_pretrained(str(tmp_path / "bart"), dropout=0.0).config
    assert (config.dropout, config.attention_dropout, config.activation_dropout) == (0.0, 0.0, 0.0)
    assert load_pretrained(str(tmp_path / "bart")).config.dropout == 0.1
