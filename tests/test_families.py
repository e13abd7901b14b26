"""Model families (issue 15): each family's offline tiny model builds with a tokenizer of its own kind and the
family's special ids, trains 2 steps through `medsum train`, saves and reloads; hub names of each family are counted
offline from shipped configurations; the beam-search cache shortcut is proven on every family that uses it; LongT5
trains on 4,096-token sources with gradient checkpointing; a study grid crosses families and methods."""

from __future__ import annotations

import json

import pytest

from conftest import DATA, read_jsonl
from medsum.accounting import count_for_config
from medsum.cli import main
from medsum.config import load_run_config
from medsum.errors import MedsumError
from medsum.models import FAMILIES, TINY_MODELS, load_pretrained, load_tokenizer
from medsum.tiny_models import build_tiny_model, tiny_model_dir

FAMILY_NAMES = ["tiny-t5", "tiny-bart", "tiny-pegasus", "tiny-longt5"]
# model.name -> (model_type, tokenizer model, pad, eos, decoder start, bos prepended, own lm_head)
EXPECTED = {
    "tiny-t5": ("t5", "Unigram", 0, 1, 0, None, True),
    "tiny-bart": ("bart", "BPE", 1, 2, 2, 0, False),
    "tiny-pegasus": ("pegasus", "Unigram", 0, 1, 0, None, False),
    "tiny-longt5": ("longt5", "Unigram", 0, 1, 0, None, True),
}
QUICK_RUN = ("data.max_train_examples=8", "data.max_eval_examples=2", "data.max_source_tokens=128",
             "data.max_target_tokens=32", "train.max_steps=2", "train.batch_size=4", "generate.num_beams=2",
             "generate.max_new_tokens=8", "generate.min_new_tokens=1")


@pytest.fixture(scope="module")
def family_dirs(tiny_splits):
    texts = [t for e in tiny_splits["train"] for t in (e.source, e.target)]
    return {name: tiny_model_dir(texts, TINY_MODELS[name]) for name in FAMILY_NAMES}


def test_tiny_is_an_alias_of_tiny_t5(family_dirs, tiny_source):
    assert TINY_MODELS["tiny"] == TINY_MODELS["tiny-t5"] == "t5"
    assert family_dirs["tiny-t5"] == tiny_source  # one cached model: the same weights and tokenizer


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tiny_builder_has_the_family_layout_and_tokenizer(family_dirs, name):
    model_type, kind, pad, eos, start, bos, own_head = EXPECTED[name]
    model, tokenizer = load_pretrained(str(family_dirs[name])), load_tokenizer(str(family_dirs[name]))
    config = model.config
    assert config.model_type == model_type and config.d_model == 64
    assert json.loads((family_dirs[name] / "tokenizer.json").read_text())["model"]["type"] == kind
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (config.pad_token_id, config.eos_token_id) == (pad, eos)
    assert config.decoder_start_token_id == start and config.vocab_size == len(tokenizer)
    ids = tokenizer("the patients were treated")["input_ids"]
    assert ids[-1] == eos and (ids[0] == bos if bos is not None else ids[0] not in tokenizer.all_special_ids)
    assert (model.get_output_embeddings().weight is not model.get_input_embeddings().weight) == own_head
    if model_type == "longt5":
        assert config.encoder_attention_type == "transient-global"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_medsum_params_of_a_tiny_model_counts_its_saved_weights(family_dirs, name):
    from medsum.models import count_parameters

    overrides = [f"model.name={name}", f"data.path={DATA}", "data.max_train_examples=8", "data.max_eval_examples=3"]
    report = count_for_config(load_run_config(None, [*overrides, "method.name=full"]))
    assert report["base_params"] == count_parameters(load_pretrained(str(family_dirs[name])))["total"]
    lora = count_for_config(load_run_config(None, [*overrides, "method.name=lora"]))
    assert lora["trainable_params"] == 12 * 16 * (64 + 64)  # q and v of 6 attentions, r=16, d_model 64 (4 x 16)


@pytest.mark.parametrize("model_type", ["t5", "bart", "pegasus", "longt5"])
def test_tiny_weights_come_from_a_fixed_seed(model_type):
    import torch

    recipe = FAMILIES[model_type].tiny
    first = build_tiny_model(recipe, model_type, 96).state_dict()
    torch.rand(10)  # the global random state does not matter
    second = build_tiny_model(recipe, model_type, 96).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


# ---------------------------------------------------------------------------------------------- the product path


@pytest.mark.slow
@pytest.mark.parametrize("name, local", [("tiny-bart", False), ("tiny-pegasus", False), ("tiny-longt5", False),
                                         ("tiny-bart", True)], ids=["bart", "pegasus", "longt5", "bart-local-dir"])
def test_family_trains_saves_and_reloads(tmp_path, family_dirs, name, local):
    """tiny-t5 is the default suite's tiny model (conftest's tiny_runs); the other families here, by tiny name and
    (BART) as a local model directory, which the run names instead of copying."""
    from medsum.serve.summarizer import load_summarizer

    run, model = tmp_path / name, str(family_dirs[name]) if local else name
    args = [f"model.name={model}", f"data.path={DATA}", "method.name=lora", *QUICK_RUN, f"output_dir={run}"]
    assert main(["train", "--quiet", *args]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["model"] == model
    assert [r["step"] for r in read_jsonl(run / "train_log.jsonl") if "loss" in r] == [1, 2]
    assert (run / "base_model").is_dir() != local  # a tiny base travels with the run; a local directory is named
    base = load_pretrained(str(run / "base_model") if not local else model)
    assert base.config.model_type == EXPECTED[name][0]
    assert load_tokenizer(str(run / "tokenizer")).eos_token_id == EXPECTED[name][3]
    summary = load_summarizer(run, device="cpu").summarize("Aspirin lowers the risk of stroke in older patients.")
    assert isinstance(summary, str)


def test_position_limit_of_a_family_is_one_clear_error(tmp_path):
    from medsum.train.build import setup

    cfg = load_run_config(None, ["model.name=tiny-bart", f"data.path={DATA}", "data.max_train_examples=8",
                                 "data.max_eval_examples=2", "data.max_source_tokens=2048", f"output_dir={tmp_path}"])
    with pytest.raises(MedsumError, match=r"data.max_source_tokens: 2048 tokens exceed the 1024 positions"):
        setup(cfg)


# ---------------------------------------------------------------------------------------------- hub names, offline

# (model, base parameters, LoRA r=16 on the family's query/value): counted on the meta device from shipped_configs.
HUB_COUNTS = [
    ("google/flan-t5-base", 247_577_856, 1_769_472),
    ("facebook/bart-large", 406_291_456, 36 * 2 * 16 * 2048),  # 12 encoder, 12 decoder self and 12 cross attentions
    ("google/pegasus-pubmed", 570_797_056, 48 * 2 * 16 * 2048),  # 568,699,904 + 2 x 1,024 x 1,024 sinusoidal (frozen)
    ("google/long-t5-tglobal-base", 247_587_456, 36 * 2 * 16 * 1536),
    ("GanjinZero/biobart-v2-base", 166_404_864, 18 * 2 * 16 * 1536),
    ("razent/SciFive-base-Pubmed_PMC", 222_903_552, 36 * 2 * 16 * 1536),  # t5-base's count: a tied lm_head
]


@pytest.mark.parametrize("model, base, lora", HUB_COUNTS, ids=[h[0] for h in HUB_COUNTS])
def test_hub_models_of_every_family_are_counted_offline(model, base, lora, capsys):
    assert main(["params", f"model.name={model}", "method.name=lora", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["base_params"], report["trainable_params"], report["total_params"]) == (base, lora, base + lora)
    full = count_for_config(load_run_config(None, [f"model.name={model}", "method.name=full"]))
    assert full["base_params"] == base


# ---------------------------------------------------------------------------------------------- beam search cache


@pytest.mark.parametrize("model_type", [t for t, f in FAMILIES.items() if f.skip_cross_attention_reorder])
def test_beam_search_cache_gives_stock_beams_and_scores(model_type):
    """Every family that skips the cross-attention reorder finds exactly the beams and scores of stock generate."""
    import torch

    from medsum import evaluate
    from medsum.evaluate import generation_kwargs

    model = build_tiny_model(FAMILIES[model_type].tiny, model_type, 96).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights than the init's, so that beams depend on the input and diverge
        for parameter in model.parameters():
            if parameter.requires_grad and parameter.ndim == 2:
                parameter.normal_(0.0, 0.3, generator=generator)
    input_ids = torch.randint(5, 96, (3, 40), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 25:] = 0
    settings = {**generation_kwargs(4, 2.0, 3, 5, 12), "return_dict_in_generate": True, "output_scores": True}
    with torch.no_grad():
        stock = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        cache = evaluate._beam_search_cache(model, 4)
        fast = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                              **{evaluate._generate_cache_argument(): cache}, **settings)
    assert type(cache).__name__ == "SelfAttentionReorderedCache"
    assert torch.equal(fast.sequences, stock.sequences)
    assert torch.equal(fast.sequences_scores, stock.sequences_scores)
    assert fast.sequences.shape[1] > 6 and len(set(map(tuple, fast.sequences.tolist()))) > 1


def test_beam_search_cache_is_not_used_where_unproven(monkeypatch):
    import dataclasses

    from medsum import evaluate
    from medsum.models import FAMILIES as TABLE

    model = build_tiny_model(FAMILIES["bart"].tiny, "bart", 96)
    assert evaluate._beam_search_cache(model, 4) is not None and evaluate._beam_search_cache(model, 1) is None
    monkeypatch.setitem(TABLE, "bart", dataclasses.replace(TABLE["bart"], skip_cross_attention_reorder=False))
    assert evaluate._beam_search_cache(model, 4) is None
    assert not FAMILIES["mt5"].skip_cross_attention_reorder  # no tiny mT5 proves it


# ---------------------------------------------------------------------------------------------- long inputs


def _long_batch(tokenizer, length: int):
    import torch

    text = " ".join(row["article"] for row in read_jsonl(DATA / "validation.jsonl.gz")[:6])
    ids = tokenizer(text, max_length=length, truncation=True)["input_ids"]
    assert len(ids) == length
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, length, dtype=torch.long),
            "labels": torch.tensor([ids[:24]])}


def test_lora_with_gradient_checkpointing_trains_encoder_and_decoder(family_dirs):
    """PEFT #522: with a frozen base and checkpointing, input grads must reach both stacks. Every LoRA B matrix of
    the encoder and of the decoder gets a gradient from one 1,024-token source (4,096 in the slow run below)."""
    from medsum.train.build import make_accelerator, setup_model

    make_accelerator("fp32")  # setup_model seeds per process through Accelerate's state
    source = family_dirs["tiny-longt5"]
    cfg = load_run_config(None, ["model.name=tiny-longt5", "method.name=lora", "train.gradient_checkpointing=true"])
    model = load_pretrained(str(source))
    model, _, _ = setup_model(cfg, model, str(source), FAMILIES["longt5"])
    seen: dict[str, bool] = {}

    def watch(stack: str):
        def hook(module, inputs, output) -> None:
            seen.setdefault(stack, output.requires_grad)
        return hook

    for stack in ("encoder", "decoder"):
        getattr(model.get_base_model(), f"get_{stack}")().get_input_embeddings().register_forward_hook(watch(stack))
    model.train()
    model(**_long_batch(load_tokenizer(str(source)), 1024)).loss.backward()
    assert seen == {"encoder": True, "decoder": True}
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert any(".encoder." in n for n in grads) and any(".decoder." in n for n in grads)
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())


def test_the_longt5_example_is_a_valid_4096_token_study():
    from pathlib import Path

    import yaml

    from medsum.study.spec import expand, spec_from_dict

    path = Path(__file__).resolve().parents[1] / "examples" / "pubmed-longt5.yaml"
    assert path.read_text().startswith("# medsum study run examples/pubmed-longt5.yaml")
    runs = expand(spec_from_dict(yaml.safe_load(path.read_text()), str(path)), [], Path("/tmp/unused"))
    assert {r.config.method.name for r in runs} == {"lora", "full"} and len(runs) == 6
    for run in runs:
        cfg = run.config
        assert (cfg.model.name, cfg.data.max_source_tokens, cfg.train.gradient_checkpointing) == \
            ("google/long-t5-tglobal-base", 4096, True)


@pytest.mark.slow
def test_tiny_longt5_trains_with_lora_on_4096_token_sources_with_gradient_checkpointing(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "long"
    args = ["model.name=tiny-longt5", f"data.path={DATA}", "method.name=lora", "train.gradient_checkpointing=true",
            "data.max_source_tokens=4096", "data.max_target_tokens=64", "data.max_train_examples=2",
            "data.max_eval_examples=1", "train.batch_size=1", "train.max_steps=2", "generate.num_beams=2",
            "generate.max_new_tokens=4", "generate.min_new_tokens=1", f"output_dir={run}"]
    assert main(["train", "--quiet", *args]) == 0
    lengths = [len(ids) for ids in load_tokenizer(str(run / "tokenizer"))(
        [r["article"] for r in read_jsonl(DATA / "train.jsonl.gz")[:2]], max_length=4096, truncation=True)["input_ids"]]
    assert max(lengths) == 4096  # the sources really were long
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    for stack in ("encoder", "decoder"):
        lora_b = [t for k, t in tensors.items() if "lora_B" in k and f".{stack}." in k]
        assert lora_b and all(bool(t.abs().sum() > 0) for t in lora_b)  # both stacks learned in 2 steps


# ---------------------------------------------------------------------------------------------- studies


@pytest.mark.slow
def test_a_study_grid_crosses_families_and_methods(tmp_path):
    import yaml

    from medsum import study

    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "families", "base": {"data": {"path": str(DATA)}}, "seeds": [1],
        "grid": {"model.name": ["tiny-t5", "tiny-bart"], "method.name": ["lora", "full"]}}))
    overrides = ["train.max_steps=2", "data.max_train_examples=4", "data.max_eval_examples=1", "train.batch_size=2",
                 "data.max_source_tokens=128", "generate.num_beams=1", "generate.max_new_tokens=4",
                 "generate.min_new_tokens=1"]
    statuses = study.run_study(spec, tmp_path / "out", overrides, show_progress=False)
    assert statuses == {f"{m}__{x}__s1": "done" for m in ("tiny-t5", "tiny-bart") for x in ("lora", "full")}
    summary = (tmp_path / "out" / "report" / "summary.md").read_text()
    for row in ("| tiny-t5 | lora |", "| tiny-bart | lora |", "| tiny-t5 | full |", "| tiny-bart | full |"):
        assert row in summary
    assert "tiny models are randomly initialised" in summary
