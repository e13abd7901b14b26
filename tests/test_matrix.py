"""The method x family matrix (issue 15), in PEFT's test style on the tiny models: every method on every tested
family wraps the model as training does (``train.build.setup_model``), and then
  - two training steps give every trainable parameter a non-zero gradient (LoRA-style B matrices start at zero, so
    their A partners learn from the second step on);
  - the trainable count equals `medsum params` (the meta-device count);
  - what the method saves loads with stock PEFT (``PeftModel.from_pretrained``) on the unmodified base and gives the
    same logits (PiSSA/OLoRA: the converted plain-LoRA adapter, within float error);
  - generation uses the adapter (its first step's logits are the forward pass's) and 2-beam search works;
  - merging, where PEFT can, gives the unmerged model's logits within 1e-4.
One finished run per family is loaded by the summariser (`medsum summarize`'s code), marked slow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from medsum.accounting import count_for_config
from medsum.config import load_run_config
from medsum.data import collate, tokenize
from medsum.errors import MedsumError
from medsum.evaluate import generate_texts, generation_kwargs
from medsum.methods import METHODS, TESTED_FAMILIES
from medsum.models import FAMILIES, count_parameters, load_pretrained, load_tokenizer
from medsum.train.build import setup_model

# id -> (method, its overrides): every registered method once, LoRA with each variant the issue names
SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lora": ("lora", ()),
    "lora-dora": ("lora", ("method.use_dora=true",)),
    "lora-rslora": ("lora", ("method.use_rslora=true",)),
    "lora-pissa": ("lora", ("method.init=pissa",)),
    "lora-olora": ("lora", ("method.init=olora",)),
    "lora-attention_ffn": ("lora", ("method.target_modules=attention_ffn",)),
    "prompt_tuning": ("prompt_tuning", ("method.num_virtual_tokens=5",)),
    "prefix_tuning": ("prefix_tuning", ("method.num_virtual_tokens=5",)),
    "ia3": ("ia3", ()),
    "adalora": ("adalora", ()),
    "vera": ("vera", ()),
    "loha": ("loha", ()),
    "lokr": ("lokr", ()),
    "oft": ("oft", ()),
    "boft": ("boft", ()),
    "hra": ("hra", ()),
    # a tiny model's weights have 4,096 entries: PEFT's 1,000 random-initialised frequencies at scale 150 would swamp
    # them (logits move by ~6 before training), and merging's float error with them
    "fourierft": ("fourierft", ("method.n_frequency=100",)),
    "ln_tuning": ("ln_tuning", ()),
    "full": ("full", ()),
}
STEPS = 2
# saved as plain LoRA for the original base (PiSSA, OLoRA) or with the pruned ranks only (AdaLoRA): equal up to
# float error
REARRANGED = ("lora-pissa", "lora-olora", "adalora")


@pytest.fixture(scope="session")
def family_source(tiny_splits):
    """family -> its tiny model directory (model + tokenizer), each built once per session."""
    from medsum.tiny_models import tiny_model_dir

    texts = [t for e in tiny_splits["train"] for t in (e.source, e.target)]
    built: dict[str, Path] = {}

    def source(family: str) -> Path:
        if family not in built:
            built[family] = Path(tiny_model_dir(texts, family))
        return built[family]

    return source


@pytest.fixture(scope="module", autouse=True)
def accelerator():
    """setup_model seeds per process, which needs Accelerate's state (as in a run). One thread: on models this
    small, a second thread costs more in synchronisation than it computes (5x the CPU time on 2 shared cores)."""
    from medsum.train.build import make_accelerator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_accelerator("fp32")[0]
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def family_batch(family_source, tiny_splits):
    """family -> two real training examples, tokenized by the family's own tokenizer."""
    def batch(family: str) -> dict[str, torch.Tensor]:
        tokenizer = load_tokenizer(str(family_source(family)))
        encoded = tokenize(tiny_splits["train"][:2], tokenizer, FAMILIES[family].prefix, 48, 16)
        return collate(encoded, tokenizer.pad_token_id)

    return batch


def run_config(source: Path, spec: str):
    method, overrides = SPECS[spec]
    return load_run_config(None, [f"model.name={source}", f"method.name={method}", *overrides])


def wrapped(source: Path, spec: str):
    """The model as a run trains it: loaded, wrapped by the method (train.build.setup_model), with its config."""
    cfg = run_config(source, spec)
    family = FAMILIES[json.loads((source / "config.json").read_text())["model_type"]]
    cfg = dataclasses.replace(cfg, method=METHODS[cfg.method.name].resolve(cfg.method, family))
    model, params, _ = setup_model(cfg, load_pretrained(str(source)), str(source), family, STEPS)
    return model, params, cfg


def train_two_steps(model, batch, method, learning_rate: float) -> list[str]:
    """Two optimizer steps as the training loop takes them (AdamW at the method's default rate); the trainable
    parameters without a gradient in the second."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=learning_rate)
    model.train()
    for step in range(STEPS):
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        silent = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
        optimizer.step()
        method.after_optimizer_step(model, step)
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return silent


def logits(model, batch) -> torch.Tensor:
    # decoder inputs, not labels: a loaded (inference-mode) AdaLoRA model fails on labels (it adds its training-only
    # orthogonality loss)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder_input_ids = base.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=decoder_input_ids).logits


def reloaded(model, source: Path, spec: str, folder: Path):
    """What the method saved, loaded by stock transformers + PEFT on the unmodified base."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    method = METHODS[SPECS[spec][0]]
    method.save(model, folder)
    if not method.saves_adapter:
        return AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(source), folder).eval()
    method.prepare_generation(loaded)
    return loaded


def first_step_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(generate's first-step logits, the forward pass's at the decoder start): equal when generation uses the
    adapter."""
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=1,
                             num_beams=1, do_sample=False, output_logits=True, return_dict_in_generate=True)
        start = torch.full((batch["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
        forward = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=start).logits[:, -1]
    return out.logits[0], forward


def merged_difference(model, batch) -> float | None:
    """Largest logit change from merging the adapter into the weights, relative to the largest logit (None: the
    method cannot merge). Relative: FourierFT's random initial spectrum moves a tiny model's logits far, and the
    float error of merging with them."""
    if not hasattr(model, "merge_and_unload") or model.peft_config["default"].is_prompt_learning:
        return None
    unmerged = logits(model, batch)
    change = (logits(model.merge_and_unload(), batch) - unmerged).abs().max()
    return float(change / max(1.0, float(unmerged.abs().max())))


def test_every_method_is_in_the_matrix():
    assert {method for method, _ in SPECS.values()} == set(METHODS)


# the heavy half (two of the four families) is marked slow: `make test` runs it, a bare pytest does not
FAMILY_PARAMS = [family if i < 2 else pytest.param(family, marks=pytest.mark.slow)
                 for i, family in enumerate(TESTED_FAMILIES)]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
@pytest.mark.parametrize("spec", list(SPECS))
def test_method_on_family(spec, family, family_source, family_batch, tmp_path):
    source, batch = family_source(family), family_batch(family)
    model, params, cfg = wrapped(source, spec)
    method = METHODS[cfg.method.name]
    assert params["trainable"] == count_parameters(model)["trainable"] > 0
    assert count_for_config(run_config(source, spec))["trainable_params"] == params["trainable"]
    assert train_two_steps(model, batch, method, method.default_learning_rate(str(source))) == []

    expected = logits(model, batch)
    loaded = reloaded(model, source, spec, tmp_path / "saved")
    tolerance = 1e-5 if spec in REARRANGED else 0.0
    assert torch.allclose(logits(loaded, batch), expected, rtol=0, atol=tolerance)

    generated, forward = first_step_logits(model, batch)
    assert torch.allclose(generated, forward, atol=1e-5), "generate must use what the method trained"
    tokenizer = load_tokenizer(str(source))
    rows = [row[row != tokenizer.pad_token_id].tolist() for row in batch["input_ids"]]
    texts, tokens = generate_texts(model, tokenizer, rows, generation_kwargs(2, 1.0, 0, 3, 3), 2, "cpu")
    assert len(texts) == 2 and 0 < tokens <= 6

    difference = merged_difference(model, batch)
    assert difference is None or difference < 1e-4


# ---------------------------------------------------------------------------------------------- refusals and hooks


def without_layer_norms(family: str):
    modules = dataclasses.replace(FAMILIES[family].modules, layer_norm=())
    return dataclasses.replace(FAMILIES[family], modules=modules)


def test_a_method_is_refused_a_family_lacking_its_modules_in_one_line():
    with pytest.raises(MedsumError, match=r"^method ln_tuning cannot serve model family pegasus: .* no layer_norm "):
        METHODS["ln_tuning"].check_family(without_layer_norms("pegasus"))
    METHODS["lora"].check_family(without_layer_norms("pegasus"))  # LoRA adapts attention: served


def test_a_refused_family_fails_before_any_weight_is_loaded(family_source, monkeypatch, tmp_path):
    from medsum import models
    from medsum.train import build

    source = family_source("pegasus")
    monkeypatch.setitem(models.FAMILIES, "pegasus", without_layer_norms("pegasus"))
    monkeypatch.setattr(build, "load_pretrained", lambda *a, **k: pytest.fail("weights loaded before the refusal"))
    cfg = load_run_config(None, [f"model.name={source}", "method.name=ln_tuning", f"output_dir={tmp_path}"])
    with pytest.raises(MedsumError, match="method ln_tuning cannot serve model family pegasus"):
        build.checked_family(cfg, str(source))
    with pytest.raises(MedsumError, match="method ln_tuning cannot serve model family pegasus"):
        count_for_config(cfg)


def test_only_adalora_acts_after_an_optimizer_step():
    from medsum.methods import base

    assert [name for name, m in METHODS.items() if m.after_optimizer_step is not base._no_step] == ["adalora"]


def test_a_study_grid_of_families_and_methods_names_its_runs_and_labels(tmp_path):
    from medsum.report import group_runs
    from medsum.report.runs import RunRecord
    from medsum.settings import flatten
    from medsum.study.spec import expand, spec_from_dict

    spec = spec_from_dict({"base": {"model": {"name": "tiny-t5"}},
                           "grid": {"model.name": ["tiny-t5", "tiny-bart"], "method.name": ["lora", "ia3", "vera"]},
                           "sweeps": {"dora": {"method.name": "lora", "method.use_dora": [True]}}}, "study")
    runs = expand(spec, [], tmp_path)
    names = sorted(run.name for run in runs)
    assert len(names) == len(set(names)) == 7  # 2 families x 3 methods, and the base's (tiny-t5's) DoRA sweep
    assert "tiny-bart__ia3__s1" in names and "tiny-t5__lora__doraTrue__s1" in names
    records = [RunRecord(run.name, tmp_path, "done", flatten(dataclasses.asdict(run.config)),
                         {"model": run.config.model.name, "method": run.config.method.name, "seed": 1,
                          "params": {"trainable": 5}, "test": {"rouge1": 30.0}}, run.membership("s"))
               for run in runs]
    labels = {(g.model, g.label) for g in group_runs(records)}
    assert {("tiny-t5", "lora (dora=False)"), ("tiny-t5", "lora (dora=True)"), ("tiny-bart", "vera"),
            ("tiny-bart", "ia3")} <= labels


# ---------------------------------------------------------------------------------------------- whole runs

# one finished run per family, each with a method whose saving or stepping is its own
RUNS = {"t5": ("adalora", ()), "bart": ("lora", ("method.init=pissa",)), "pegasus": ("ln_tuning", ()),
        "longt5": ("prefix_tuning", ("method.num_virtual_tokens=4",))}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(RUNS))
def test_medsum_summarize_loads_a_run_of_every_family(family, data_dir, tmp_path, capsys):
    from conftest import TINY_OVERRIDES
    from medsum.cli import main

    method, extra = RUNS[family]
    run = tmp_path / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("model.name=")]
    assert main(["train", "--quiet", *overrides, f"model.name=tiny-{family}", f"method.name={method}", *extra,
                 "generate.num_beams=2", f"output_dir={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["model"] == f"tiny-{family}"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    if method == "adalora":  # the budget was allocated after each of the two steps
        assert adapter["rank_pattern"]
    if method == "lora":  # converted to plain LoRA of twice the rank, for the unmodified base_model/
        assert adapter["init_lora_weights"] is True and adapter["r"] == 32
    text = tmp_path / "article.txt"
    text.write_text("A 54-year-old woman presented with fever, cough and bilateral infiltrates.")
    capsys.readouterr()
    assert main(["summarize", "--run", str(run), "--json", str(text)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["file"] == str(text)


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("preset, t5, bart", [
    ("attention", ["q", "v"], ["q_proj", "v_proj"]),
    ("attention_all", ["q", "k", "v", "o"], ["q_proj", "k_proj", "v_proj", "out_proj"]),
    ("attention_ffn", ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
     ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
    ("all-linear", ["all-linear"], ["all-linear"]),
])
def test_target_presets_name_the_family_roles(preset, t5, bart):
    for method in ("lora", "adalora", "vera", "loha", "lokr", "oft", "boft", "hra", "fourierft"):
        cfg = load_run_config(None, [f"method.name={method}", f"method.target_modules={preset}"]).method
        for family, expected in (("t5", t5), ("bart", bart)):
            assert METHODS[method].resolve(cfg, FAMILIES[family]).target_modules == expected


def test_target_presets_stand_alone():
    with pytest.raises(MedsumError, match=r"method.target_modules: the preset attention stands alone"):
        load_run_config(None, ["method.name=loha", "method.target_modules=[attention,wo]"])


def test_what_peft_refuses_is_one_line_naming_the_method(family_source):
    SPECS["fourierft-5000"] = ("fourierft", ("method.n_frequency=5000",))  # more than the 64 x 64 entries
    try:
        with pytest.raises(MedsumError, match=r"^method.name=fourierft, method.target_modules=\['q', 'v'\]: "
                                              r"`n_frequency` should be less than .* 4096$"):
            wrapped(family_source("t5"), "fourierft-5000")
    finally:
        del SPECS["fourierft-5000"]
