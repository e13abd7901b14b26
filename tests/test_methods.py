"""Adaptation methods on the tiny model: exactly the right parameters train and every one of them learns (issue 3),
and the PEFT pitfalls of PITFALLS.md stay fixed (prompt tuning with beams, decoder_attention_mask, dead prompts)."""

from __future__ import annotations

import dataclasses

import matplotlib
import pytest
import torch

from medsum.cli import build_parser
from medsum.config import load_run_config
from medsum.data import collate, tokenize
from medsum.errors import MedsumError
from medsum.evaluate import generate_texts, generation_kwargs
from medsum.methods import METHODS, Method, ModelContext
from medsum.models import FAMILIES, count_parameters, load_pretrained
from medsum.report import group_runs, plots, sweep_groups, tables
from medsum.report.runs import RunRecord
from medsum.settings import Bound, MethodConfig, Names, flatten, setting
from medsum.study.spec import expand, spec_from_dict

matplotlib.use("Agg")

D_MODEL = 64  # models.TINY_ARCHITECTURE


def wrapped(tiny_source, method: str, *overrides: str, model=None):
    cfg = load_run_config(None, [f"method.name={method}", *overrides])
    base = model if model is not None else load_pretrained(str(tiny_source))
    torch.manual_seed(0)
    return METHODS[method].apply(base, cfg.method, ModelContext("tiny", str(tiny_source), FAMILIES["t5"])), cfg.method


@pytest.fixture(scope="module")
def batch(tiny_splits, tiny_tokenizer):
    """Two real training examples, short, labels padded with -100."""
    encoded = tokenize(tiny_splits["train"][:2], tiny_tokenizer, "summarize: ", 48, 24)
    return collate(encoded, tiny_tokenizer.pad_token_id)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def backward(model, batch) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()


def without_gradient(model) -> list[str]:
    return [name for name, p in trainable(model).items() if p.grad is None or not p.grad.abs().sum() > 0]


def test_registry_names_the_three_methods():
    assert {"lora", "prompt_tuning", "full"} <= set(METHODS)
    assert [METHODS[m].saves_adapter for m in ("lora", "prompt_tuning", "full")] == [True, True, False]


def test_default_learning_rates_follow_mission():
    assert METHODS["lora"].default_learning_rate("google/flan-t5-large") == 3e-4
    assert METHODS["prompt_tuning"].default_learning_rate("google/flan-t5-large") == 3e-2
    full = METHODS["full"].default_learning_rate
    assert [full(f"google/flan-t5-{size}") for size in ("small", "base", "large", "xl")] == [5e-5, 3e-5, 2e-5, 2e-5]
    assert full("tiny") == 5e-5


def test_full_learning_rate_reads_the_model_size_not_the_folder_path():
    assert METHODS["full"].default_learning_rate("/data/database/flan-t5-small") == 5e-5
    assert METHODS["full"].default_learning_rate("/mnt/large-disk/flan-t5-small") == 5e-5


# ---------------------------------------------------------------------------------------------- gradients


def test_lora_trains_only_adapters_and_every_one_learns(tiny_source, batch):
    model, _ = wrapped(tiny_source, "lora")
    params = trainable(model)
    assert params and all("lora_A" in name or "lora_B" in name for name in params)
    assert count_parameters(model)["trainable"] == 12 * 16 * (D_MODEL + D_MODEL)  # q, v in 6 attentions, r=16
    backward(model, batch)
    # lora_B starts at zero, so on step 1 only lora_B receives a gradient ...
    assert [n for n in without_gradient(model) if "lora_B" in n] == []
    assert all(p.grad is None or not p.grad.any() for n, p in params.items() if "lora_A" in n)
    torch.optim.AdamW(params.values(), lr=1e-2).step()
    # ... and once B moved, every adapter weight does
    backward(model, batch)
    assert without_gradient(model) == []


def test_lora_with_gradient_checkpointing_still_trains(tiny_source, batch):
    base = load_pretrained(str(tiny_source))
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, _ = wrapped(tiny_source, "lora", model=base)
    model.enable_input_require_grads()
    backward(model, batch)
    assert [n for n in without_gradient(model) if "lora_B" in n] == []


def test_prompt_tuning_trains_only_the_encoder_prompt(tiny_source, batch):
    model, cfg = wrapped(tiny_source, "prompt_tuning", "method.num_virtual_tokens=20")
    params = trainable(model)
    assert list(params) == ["prompt_encoder.default.embedding.weight"]
    assert params["prompt_encoder.default.embedding.weight"].shape == (20, D_MODEL)  # not 40: no decoder prompts
    assert count_parameters(model)["trainable"] == 20 * D_MODEL
    assert model.peft_config["default"].num_transformer_submodules == 1
    backward(model, batch)
    assert without_gradient(model) == []
    grad = params["prompt_encoder.default.embedding.weight"].grad
    assert (grad.abs().sum(dim=1) > 0).all(), "every virtual token receives a gradient"


def test_prompt_tuning_text_init_uses_the_init_text(tiny_source, tiny_tokenizer):
    model, cfg = wrapped(tiny_source, "prompt_tuning", "method.num_virtual_tokens=4", "method.init_text=cancer cells")
    prompt = model.prompt_encoder["default"].embedding.weight
    text_ids = tiny_tokenizer("cancer cells", add_special_tokens=False)["input_ids"]
    first = model.get_input_embeddings().weight[text_ids[0]]
    assert torch.allclose(prompt[0], first)


def test_full_fine_tuning_trains_every_parameter(tiny_source, batch):
    model, _ = wrapped(tiny_source, "full")
    counts = count_parameters(model)
    assert counts["trainable"] == counts["total"]
    assert model.lm_head.weight is not model.shared.weight
    backward(model, batch)
    assert without_gradient(model) == []


# ---------------------------------------------------------------------------------------------- PEFT pitfalls


def test_prompt_tuning_generates_with_beams(tiny_source, batch, tiny_tokenizer):
    model, _ = wrapped(tiny_source, "prompt_tuning", "method.num_virtual_tokens=5")
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=4,
                             max_new_tokens=6, min_new_tokens=2)
    assert out.shape[0] == 2 and 3 <= out.shape[1] <= 7
    settings = generation_kwargs(4, 2.0, 3, 2, 6)
    texts, generated = generate_texts(model, tiny_tokenizer, [r.tolist() for r in batch["input_ids"]], settings, 2,
                                      "cpu")
    assert len(texts) == 2 and generated >= 4


def test_prompt_tuning_prompt_reaches_the_encoder(tiny_source, batch):
    base = load_pretrained(str(tiny_source)).eval()
    with torch.no_grad():
        plain = base(**batch).logits
    model, _ = wrapped(tiny_source, "prompt_tuning", "method.num_virtual_tokens=5", model=base)
    model.eval()
    with torch.no_grad():
        prompted = model(**batch).logits
    assert prompted.shape == plain.shape  # the prompt lengthens the encoder input only
    assert not torch.allclose(prompted, plain)


def test_prompt_tuning_accepts_decoder_attention_mask(tiny_source, batch):
    """Regression for peft #439/#674: the decoder attention mask was once extended by the prompt length."""
    model, _ = wrapped(tiny_source, "prompt_tuning", "method.num_virtual_tokens=5")
    model.eval()
    labels = batch["labels"]
    with torch.no_grad():
        masked = model(**batch, decoder_attention_mask=(labels != -100).long()).loss
        one = {k: v[:1] for k, v in batch.items()}
        full_width = (one["labels"] != -100).sum()
        one = {**{k: v for k, v in one.items() if k != "labels"}, "labels": one["labels"][:, :full_width]}
        with_mask = model(**one, decoder_attention_mask=torch.ones_like(one["labels"])).loss
        without = model(**one).loss
    assert torch.isfinite(masked)
    assert with_mask.item() == pytest.approx(without.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------- LoRA targets


@pytest.mark.parametrize("targets, resolved, count", [
    (None, ["q", "v"], 12 * 16 * 128),
    ("[q,k,v,o]", ["k", "o", "q", "v"], 24 * 16 * 128),
    # every linear layer but lm_head: q,k,v,o (64->64), wi_0, wi_1 (64->128), wo (128->64); 2+2 blocks, cross-attn
    ("[all-linear]", ["k", "o", "q", "v", "wi_0", "wi_1", "wo"], 86_016),
])
def test_lora_target_modules_are_resolved_and_recorded(tiny_source, targets, resolved, count):
    overrides = [f"method.target_modules={targets}"] if targets else []
    model, cfg = wrapped(tiny_source, "lora", *overrides)
    assert METHODS["lora"].describe(model, cfg) == {"resolved_target_modules": resolved}
    assert count_parameters(model)["trainable"] == count
    assert not any("lm_head" in n for n in trainable(model))


def test_lora_unknown_target_module_is_a_clear_error(tiny_source):
    with pytest.raises(MedsumError, match=r"method.target_modules=\['nope'\]"):
        wrapped(tiny_source, "lora", "method.target_modules=[nope]")


@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning"])
def test_beam_search_without_cross_attention_reorder_finds_the_same_beams(method, tiny_source, tiny_splits,
                                                                          tiny_tokenizer, monkeypatch):
    """medsum's beam-search cache skips reordering the encoder keys and values (identical across an input's
    beams): every sequence and score equals transformers' default cache, on padded batches of real inputs."""
    from transformers import EncoderDecoderCache

    from medsum import evaluate

    model, _ = wrapped(tiny_source, method, *(["method.num_virtual_tokens=5"] if method == "prompt_tuning" else []))
    with torch.no_grad():  # LoRA's B starts at zero: perturb every trainable weight so the adapter shapes the beams
        for p in trainable(model).values():
            p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    encoded = tokenize(tiny_splits["test"][:3] + tiny_splits["validation"][:3], tiny_tokenizer, "summarize: ", 40, 8)
    batch = collate([{"input_ids": e["input_ids"]} for e in encoded], tiny_tokenizer.pad_token_id, with_labels=False)
    settings = {**generation_kwargs(4, 2.0, 3, 5, 12), "return_dict_in_generate": True, "output_scores": True}
    cross_reorders = []
    original = EncoderDecoderCache.reorder_cache
    monkeypatch.setattr(EncoderDecoderCache, "reorder_cache",
                        lambda self, beam_idx: (cross_reorders.append(1), original(self, beam_idx)))
    with torch.no_grad():
        default = model.generate(**batch, **settings)
        assert cross_reorders, "the default cache reorders both caches"
        cross_reorders.clear()
        cache = evaluate._beam_search_cache(model, 4)
        fast = model.generate(**batch, **{evaluate._generate_cache_argument(): cache}, **settings)
    assert not cross_reorders and type(cache).__name__ == "SelfAttentionReorderedCache"
    assert torch.equal(fast.sequences, default.sequences)
    assert torch.allclose(fast.sequences_scores, default.sequences_scores, atol=1e-6)
    assert fast.sequences.shape[1] > 6 and len(set(map(tuple, fast.sequences.tolist()))) > 1
    texts, _ = generate_texts(model, tiny_tokenizer, [e["input_ids"] for e in encoded], generation_kwargs(4, 2.0, 3,
                                                                                                          5, 12), 6,
                              "cpu")
    assert texts == [tiny_tokenizer.decode(row[1:], skip_special_tokens=True).strip()
                     for row in default.sequences.tolist()]


def test_beam_search_cache_gives_the_default_beams_on_bart():
    """Nothing in the beam-search cache is T5's: a BART finds the same beams with it as with the default cache."""
    from transformers import BartConfig, BartForConditionalGeneration

    from medsum import evaluate

    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)).eval()
    input_ids = torch.randint(4, 96, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0
    settings = {**generation_kwargs(4, 2.0, 3, 5, 12), "return_dict_in_generate": True, "output_scores": True}
    with torch.no_grad():
        default = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        cache = evaluate._beam_search_cache(model, 4)
        fast = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                              **{evaluate._generate_cache_argument(): cache}, **settings)
    assert type(cache).__name__ == "SelfAttentionReorderedCache"
    assert torch.equal(fast.sequences, default.sequences)
    assert torch.allclose(fast.sequences_scores, default.sequences_scores, atol=1e-6)


# ---------------------------------------------------------------------------------------------- adding a method


@dataclasses.dataclass
class ToyConfig(MethodConfig):
    name: str = "toy"
    width: int = setting(3, "Toy width.", bound=Bound(1),
                         names=Names(run="w", short="width", title="toy width w", axis="toy width (units)"))
    target_modules: list[str] | None = setting(None, "Modules; null takes the family's feed-forward modules.")


def _toy_resolve(cfg: ToyConfig, family) -> ToyConfig:
    if cfg.target_modules is not None:
        return cfg
    return dataclasses.replace(cfg, target_modules=list(family.modules.feed_forward))


TOY = Method(ToyConfig, "toy tuning", lambda model, cfg, ctx: model, lambda model_name: 1e-3, "1e-3",
             saves_adapter=False, resolve=_toy_resolve)


@pytest.fixture
def toy(monkeypatch):
    """A throwaway method registered the way a new module would be: one registry entry, no other file edited."""
    monkeypatch.setitem(METHODS, "toy", TOY)


def test_a_registered_method_is_validated_as_config(toy):
    assert load_run_config(None, ["method.name=toy", "method.width=5"]).method == ToyConfig(width=5)
    with pytest.raises(MedsumError, match=r"method.width must be >= 1, got 0"):
        load_run_config(None, ["method.name=toy", "method.width=0"])
    with pytest.raises(MedsumError, match="method.width is not a setting of method lora"):
        load_run_config(None, ["method.name=lora", "method.width=5"])


def test_a_registered_method_appears_in_help(toy, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "method.width [toy] Toy width. [3]" in text
    assert f"Adaptation method: {' | '.join(METHODS)}." in text and text.count(" | toy.") == 1
    assert "toy tuning 1e-3)" in text
    assert "LayerNorm tuning or toy tuning" in " ".join(build_parser().format_help().split())


def test_a_registered_method_names_study_runs_and_report_labels(toy, tmp_path):
    spec = spec_from_dict({"base": {"model": {"name": "tiny"}}, "grid": {"method.name": ["toy"]},
                           "sweeps": {"toy_width": {"method.name": "toy", "method.width": [2, 4]}}}, "study")
    runs = expand(spec, [], tmp_path)
    assert sorted(run.name for run in runs) == ["tiny__toy__s1", "tiny__toy__w2__s1", "tiny__toy__w4__s1"]
    records = [RunRecord(run.name, tmp_path, "done", flatten(dataclasses.asdict(run.config)),
                         {"model": "tiny", "method": "toy", "seed": 1, "params": {"trainable": 5},
                          "test": {"rouge1": 30.0 + run.config.method.width}}, run.membership("s"))
               for run in runs]
    groups = group_runs(records)
    assert [g.label for g in groups] == ["toy (width=2)", "toy (width=3)", "toy (width=4)"]
    key, members = sweep_groups(records, groups)["toy_width"]
    assert "| toy width w | Model |" in tables._sweep_section("toy_width", key, members)
    assert plots.sweep_plot("toy_width", key, members).axes[0].get_xlabel().startswith("toy width (units)")


def test_each_method_resolves_its_own_defaults_against_the_family(toy):
    from medsum.train.build import resolve_config

    for name, expected in (("lora", ["q_proj", "v_proj"]), ("toy", ["fc1", "fc2"])):
        cfg = load_run_config(None, [f"method.name={name}"])
        assert resolve_config(cfg, FAMILIES["bart"], "fp32").method.target_modules == expected
    assert METHODS["lora"].resolve(load_run_config().method, FAMILIES["t5"]).target_modules == ["q", "v"]
    prompt = load_run_config(None, ["method.name=prompt_tuning"]).method
    assert METHODS["prompt_tuning"].resolve(prompt, FAMILIES["t5"]) == prompt


def test_lora_warns_of_an_adapter_that_cannot_change_the_output():
    check = METHODS["lora"].check_saved
    assert "every lora_B weight is zero" in check({"x.lora_A.weight": torch.ones(2), "x.lora_B.weight": torch.zeros(2)})
    assert check({"x.lora_A.weight": torch.ones(2), "x.lora_B.weight": torch.ones(2)}) is None
    assert METHODS["prompt_tuning"].check_saved({"prompt_embeddings": torch.zeros(2)}) is None
