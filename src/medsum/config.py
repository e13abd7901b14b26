"""Typed run configuration: dataclasses with their help text, YAML loading, dotted overrides and validation.

A run config is plain data. ``load_run_config(path, overrides)`` reads an optional YAML file, applies
``key=value`` overrides (values parsed as YAML), and builds the dataclasses below; every problem found
(unknown key, wrong type, out-of-range value) is reported at once in one ``MedsumError`` naming the keys.
Each setting is declared once, with its help, bound and report names (``medsum.settings``). The ``method``
section is chosen by ``method.name`` from the method registry, so each adaptation method owns its settings
(see ``medsum.methods``); help text that lists the methods is generated from the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsum import rundir
from medsum.errors import MedsumError
from medsum.methods import DEFAULT_METHOD, METHODS
from medsum.settings import (
    Bound,
    MethodConfig,
    Names,
    bound_errors,
    build_dataclass,
    default_of,
    help_of,
    read_yaml,
    setting,
)


def _learning_rate_help() -> str:
    defaults = ", ".join(f"{m.label} {m.learning_rate_help}" for m in METHODS.values())
    return f"Peak learning rate; null takes the method's default ({defaults})."


def _method_name_help() -> str:
    return f"Adaptation method: {' | '.join(METHODS)}."


REPORT_TO = ("tensorboard", "mlflow", "wandb")  # the trackers of train.report_to (medsum.train.tracking)
_POSITIVE, _NON_NEGATIVE, _AT_LEAST_ONE = Bound(0, low_open=True), Bound(0), Bound(1)
_PROBABILITY = Bound(0, 1, high_open=True)


@dataclass
class ModelConfig:
    name: str = setting(
        "tiny",
        "A hub id (google/flan-t5-large, facebook/bart-large, google/pegasus-pubmed, google/long-t5-tglobal-base), "
        "a local model directory, or an offline tiny model: tiny-t5 (alias tiny: the Flan-T5 layout), tiny-bart, "
        "tiny-pegasus, tiny-longt5 (transient-global attention), randomly initialised, with a tokenizer of the "
        "family's kind trained on the run's training text.",
    )
    dropout: float | None = setting(
        None, "Dropout probability of the model's own layers (T5: dropout_rate; BART/PEGASUS: dropout, attention "
              "and activation dropout); null keeps the checkpoint's (0.1 for Flan-T5). 0 makes a CPU training step "
              "1.7-2.1x faster at fp32 (docs/performance.md) but is a different training recipe.", bound=_PROBABILITY
    )


@dataclass
class DataConfig:
    path: str = setting(
        "ccdv/pubmed-summarization",
        "A directory with {train,validation,test}.jsonl[.gz] (or .csv/.parquet), a single JSONL/CSV/Parquet "
        "file (split 80/10/10 by a shuffle seeded with data.split_seed), or a hub dataset id.",
    )
    source_field: str = setting("article", "Record field holding the text to summarise.")
    target_field: str = setting("abstract", "Record field holding the reference summary.")
    prefix: str | None = setting(
        None, "Text put before every source; null takes the model family's (`summarize: ` for T5, none for BART)."
    )
    max_source_tokens: int = setting(1024, "Sources are truncated to this many tokens.", bound=_POSITIVE,
                                     names=Names(run="src"))
    max_target_tokens: int = setting(256, "Training labels are truncated to this many tokens (ROUGE always "
                                          "scores against the full reference text).", bound=_POSITIVE)
    max_train_examples: int | None = setting(None, "Use only the first N training rows (file order); null: all.",
                                             bound=_POSITIVE)
    max_eval_examples: int | None = setting(
        None, "Use only the first N validation and test rows (file order, the same for every seed); null: all.",
        bound=_POSITIVE
    )
    split_seed: int = setting(0, "Seed of the shuffle that splits a single data file (independent of `seed`).")


@dataclass
class TrainConfig:
    learning_rate: float | None = setting(
        None, _learning_rate_help, bound=_POSITIVE,
        names=Names(run="lr", short="lr", title="learning rate", axis="peak learning rate")
    )
    epochs: float = setting(3.0, "Passes over the training data (ignored when max_steps is set).", bound=_POSITIVE)
    max_steps: int | None = setting(None, "Optimizer steps to run; null: derived from epochs.", bound=_POSITIVE,
                                    names=Names(run="steps"))
    batch_size: int = setting(8, "Examples per device per micro-batch.", bound=_POSITIVE, names=Names(run="bs"))
    grad_accum: int = setting(1, "Micro-batches accumulated into one optimizer step.", bound=_POSITIVE)
    warmup_ratio: float = setting(0.1, "Share of the steps spent warming the learning rate up (linear schedule).",
                                  bound=_PROBABILITY)
    weight_decay: float = setting(0.01, "AdamW weight decay (not applied to biases and norm weights).",
                                  bound=_NON_NEGATIVE)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm; 0 disables clipping.", bound=_NON_NEGATIVE)
    precision: str = setting(
        "auto", "auto | fp32 | bf16 | fp16. auto: bf16 on a GPU that supports it, else fp32. fp16 is refused for "
                "the families whose activations overflow it (T5, LongT5, mT5, PEGASUS)."
    )
    gradient_checkpointing: bool = setting(False, "Trade compute for memory (recomputes activations).")
    compile: bool = setting(False, "torch.compile the training forward pass (GPUs; the first steps compile).")
    eval_every: int = setting(
        0, "Validate every N optimizer steps (0: at the end of each epoch and of training); the best "
           "validation ROUGE-1 selects the checkpoint that is tested.", bound=_NON_NEGATIVE
    )
    early_stopping_patience: int = setting(
        3, "Stop after this many validations without a better ROUGE-1 (0 disables early stopping).",
        bound=_NON_NEGATIVE
    )
    eval_max_examples: int | None = setting(
        64, "Validation during training uses at most this many validation examples (null: all).", bound=_POSITIVE
    )
    eval_num_beams: int = setting(1, "Beams for validation during training (1: greedy, cheap); the test "
                                     "split always uses generate.*.", bound=_AT_LEAST_ONE)
    validate_lone_candidate: bool = setting(
        False, "Validate even when a run validates only once, at its last step: that validation cannot change "
               "which weights are tested (the final ones), so by default it is skipped and its time saved."
    )
    save_every: int = setting(0, "Write a resumable checkpoint every N optimizer steps (0: never).",
                              bound=_NON_NEGATIVE)
    keep_checkpoints: int = setting(2, "How many of the newest checkpoints to keep on disk.", bound=_AT_LEAST_ONE)
    log_every: int = setting(1, "Write a train_log.jsonl line every N optimizer steps.", bound=_AT_LEAST_ONE)
    report_to: list[str] = setting(
        [], "Experiment trackers that also receive the loss, learning rate, tokens/s, validation and test ROUGE and "
            "the config: any of tensorboard | mlflow | wandb ([]: none). TensorBoard writes RUN_DIR/tensorboard/; "
            "MLflow a local store RUN_DIR/mlflow.db (a study's: STUDY_DIR/mlflow.db) unless MLFLOW_TRACKING_URI is "
            "set; W&B honours WANDB_MODE=offline. Needs pip install 'medsum[trackers]' (W&B: wandb)."
    )


@dataclass
class GenerateConfig:
    """The generation settings, each declared once: a config may ask for any value within ``bound``; a request
    to the HTTP service only up to ``serve_max`` (a server must not accept num_beams=10_000)."""

    num_beams: int = setting(4, "Beam search width for test generation.", bound=_AT_LEAST_ONE, serve_max=8)
    length_penalty: float = setting(2.0, "Beam search length penalty (>1 favours longer summaries).",
                                    bound=_POSITIVE, serve_max=5)
    no_repeat_ngram_size: int = setting(3, "Never repeat an n-gram of this size (0 disables).",
                                        bound=_NON_NEGATIVE, serve_max=10)
    min_new_tokens: int = setting(30, "Minimum generated tokens.", bound=_NON_NEGATIVE,
                                  serve_max=1024)
    max_new_tokens: int = setting(256, "Maximum generated tokens.", bound=_AT_LEAST_ONE, serve_max=1024)
    batch_size: int = setting(8, "Examples per generation batch (batches are length-sorted).", bound=_POSITIVE)


@dataclass
class EvaluateConfig:
    """Optional model-based metrics of the test summaries (``medsum.model_metrics``), each from a local model
    directory: nothing is downloaded, and an unset one is skipped (the report says so)."""

    bertscore_model: str | None = setting(
        None, "A local model directory (a BERT-like encoder and its tokenizer) for BERTScore (bert-score, last "
              "layer, no idf) of each test summary against its reference; null: skipped."
    )
    nli_model: str | None = setting(
        None, "A local NLI model directory (sequence classification with an `entailment` label) for SummaC "
              "zero-shot faithfulness: each summary sentence's highest entailment probability over the source "
              "sentences, averaged; null: skipped."
    )


GENERATION_SETTINGS = tuple(f.name for f in dataclasses.fields(GenerateConfig) if f.metadata["serve_max"])


@dataclass
class RunConfig:
    name: str | None = setting(None, "Run name; null: <method>-s<seed>.")
    seed: int = setting(42, "Seed of everything that trains (initialisation of new weights, data order, dropout).")
    output_dir: str | None = setting(None, "Run directory; null: runs/<name>.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=lambda: METHODS[DEFAULT_METHOD].config_class())
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.method.name}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.run_name)


SECTIONS = ("model", "data", "method", "train", "generate", "evaluate")


# ---------------------------------------------------------------------------------------------- parsing helpers


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value parsed as YAML, so that lists, numbers and null work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise MedsumError(f"override {item!r} is not key=value (e.g. train.learning_rate=3e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def all_keys() -> list[str]:
    """Every dotted key a run config accepts, across all methods."""
    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]
    for section in ("model", "data", "train", "generate", "evaluate"):
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(_section_class(section))]
    method_keys = {"method.name"}
    for method in METHODS.values():
        method_keys |= {f"method.{f.name}" for f in dataclasses.fields(method.config_class)}
    return keys + sorted(method_keys)


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown config key {key}{hint}"


def _section_class(section: str) -> type:
    return {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "generate": GenerateConfig,
            "evaluate": EvaluateConfig}[section]


# ---------------------------------------------------------------------------------------------- validation


def _validate_values(cfg: RunConfig) -> list[str]:
    """Every value outside its declared bound, and the checks that involve more than one setting."""
    errors = [] if 0 <= cfg.seed < 2**32 else [f"seed must be in [0, 2**32), got {cfg.seed}"]
    for section in SECTIONS:
        errors += bound_errors(section, getattr(cfg, section))
    unknown = [name for name in cfg.train.report_to if name not in REPORT_TO]
    if unknown:
        errors.append(f"train.report_to: unknown tracker {unknown[0]!r} (known: {', '.join(REPORT_TO)})")
    if cfg.train.precision not in ("auto", "fp32", "bf16", "fp16"):
        errors.append(f"train.precision must be auto, fp32, bf16 or fp16, got {cfg.train.precision!r}")
    g = cfg.generate
    if g.min_new_tokens > g.max_new_tokens:
        errors.append(f"generate.min_new_tokens must be in [0, generate.max_new_tokens], got {g.min_new_tokens}")
    return errors + evaluate_model_errors(cfg.evaluate) + cfg.method.validate()


def evaluate_model_errors(evaluate: EvaluateConfig) -> list[str]:
    """A metric model must be a local directory: nothing is downloaded (a hub id would be)."""
    errors = []
    for key in ("bertscore_model", "nli_model"):
        path = getattr(evaluate, key)
        if path is not None and not Path(str(path)).expanduser().is_dir():
            errors.append(f"evaluate.{key}: no directory {path} (a local model directory; nothing is downloaded)")
    return errors


def config_from_dict(tree: dict, source: str = "config") -> RunConfig:
    """Builds and validates a RunConfig from a nested mapping; all problems are reported in one error."""
    errors: list[str] = []
    top, sections = _split_sections(tree, errors)
    cfg = build_dataclass(RunConfig, top, "", errors, unknown_key_message)
    for section in ("model", "data", "train", "generate", "evaluate"):
        values = sections.get(section, {})
        setattr(cfg, section, build_dataclass(_section_class(section), values, f"{section}.", errors,
                                             unknown_key_message))
    method = _method_config(dict(sections.get("method", {})), errors)
    if method is not None:
        cfg.method = method
    try:  # value checks run even after unknown keys, so that every problem is reported at once
        errors += _validate_values(cfg)
    except TypeError:  # a value of the wrong type, already reported
        pass
    if errors:
        raise MedsumError(f"{source}: " + "; ".join(errors))
    return cfg


def _split_sections(tree: dict, errors: list[str]) -> tuple[dict[str, Any], dict[str, dict]]:
    """(top-level keys, section name -> its mapping)."""
    top: dict[str, Any] = {}
    sections: dict[str, dict] = {}
    for key, value in tree.items():
        if key not in SECTIONS:
            top[key] = value
        elif value is None or isinstance(value, dict):
            sections[key] = value or {}
        else:
            errors.append(f"{key}: expected a mapping of {key}.* settings, got {value!r}")
    return top, sections


def _method_config(values: dict, errors: list[str]) -> MethodConfig | None:
    """The settings of the method ``values`` names; another method's settings are errors."""
    method_name = values.get("name", DEFAULT_METHOD)
    if not isinstance(method_name, str) or method_name not in METHODS:
        close = difflib.get_close_matches(str(method_name), list(METHODS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        errors.append(f"method.name: unknown method {method_name!r} (known: {', '.join(METHODS)}){hint}")
        return None
    method_cls = METHODS[method_name].config_class
    method_keys = {f.name for f in dataclasses.fields(method_cls)}
    for key in list(values):
        if key not in method_keys and f"method.{key}" in all_keys():
            errors.append(f"method.{key} is not a setting of method {method_name} "
                          f"(its settings: {', '.join(sorted(method_keys - {'name'})) or 'none'})")
            del values[key]
    return build_dataclass(method_cls, values, "method.", errors, unknown_key_message)


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config from an optional YAML file plus ``key=value`` overrides."""
    tree = read_yaml(path) if path else {}
    source = str(path) if path else "config"
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(tree, key, value)
    return config_from_dict(tree, source)


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_run_config(cfg: RunConfig, run_dir: str | Path) -> None:
    """Writes the resolved config into the run directory (config.yaml)."""
    rundir.write_config(run_dir, config_to_dict(cfg))


def help_lines() -> list[tuple[str, str, str]]:
    """(key, default, help) for every config key, methods included: the source of --help and the README reference."""
    rows = []
    for f in dataclasses.fields(RunConfig):
        if f.name not in SECTIONS:
            rows.append((f.name, f.default, help_of(f)))
    for section in ("model", "data"):
        rows += _section_rows(section, _section_class(section))
    rows.append(("method.name", DEFAULT_METHOD, _method_name_help()))
    for name, method in METHODS.items():
        for f in dataclasses.fields(method.config_class):
            if f.name != "name":
                rows.append((f"method.{f.name}", default_of(f), f"[{name}] " + help_of(f)))
    for section in ("train", "generate", "evaluate"):
        rows += _section_rows(section, _section_class(section))
    return [(key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip(), text)
            for key, default, text in rows]


def _section_rows(section: str, cls: type) -> list[tuple[str, Any, str]]:
    return [(f"{section}.{f.name}", default_of(f), help_of(f)) for f in dataclasses.fields(cls)]


def names_of(key: str, method: str | None = None) -> Names:
    """What run names and reports call a dotted config key (``method.*``: as ``method``, else any method, names
    it); every name is filled in."""
    found = _field_of(key, method)
    names = found.metadata.get("names") or Names() if found else Names()
    last = key.split(".")[-1]
    title = names.title or key
    return Names(run=names.run or last, short=names.short or last, title=title, axis=names.axis or title)


def _field_of(key: str, method: str | None) -> dataclasses.Field | None:
    section, _, name = key.rpartition(".")
    if section == "method":
        classes = [METHODS[m].config_class for m in ([method] if method in METHODS else []) + list(METHODS)]
    elif section:
        classes = [_section_class(section)] if section in SECTIONS else []
    else:
        classes = [RunConfig]
    fields = [f for cls in classes for f in dataclasses.fields(cls) if f.name == name]
    return fields[0] if fields else None


def markdown_reference() -> str:
    """The README's config reference table (a test keeps the README equal to this)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in help_lines():
        rows.append(f"| `{key}` | `{default}` | {text.replace('|', '/')} |")
    return "\n".join(rows)
