"""Typed run configuration: dataclasses with their help text, YAML loading, dotted overrides and validation.

A run config is plain data. ``load_run_config(path, overrides)`` reads an optional YAML file, applies
``key=value`` overrides (values parsed as YAML), and builds the dataclasses below; every problem found
(unknown key, wrong type, out-of-range value) is reported at once in one ``MedsumError`` naming the keys.
The ``method`` section is chosen by ``method.name`` from the method registry, so each adaptation method owns
its settings (see ``medsum.methods``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medsum import rundir
from medsum.errors import MedsumError


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text, so that ``--help`` and the README cannot drift from the code."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelConfig:
    name: str = setting(
        "tiny",
        "A hub id (google/flan-t5-large), a local model directory, or `tiny`: a small randomly initialised T5 "
        "in the Flan-T5 layout with a tokenizer trained on the run's training text (fully offline).",
    )
    dropout: float | None = setting(
        None, "Dropout probability of the model's own layers (T5: dropout_rate; BART/PEGASUS: dropout, attention "
              "and activation dropout); null keeps the checkpoint's (0.1 for Flan-T5). 0 makes a CPU training step "
              "1.7-2.1x faster at fp32 (docs/performance.md) but is a different training recipe."
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
    max_source_tokens: int = setting(1024, "Sources are truncated to this many tokens.")
    max_target_tokens: int = setting(256, "Training labels are truncated to this many tokens (ROUGE always "
                                          "scores against the full reference text).")
    max_train_examples: int | None = setting(None, "Use only the first N training rows (file order); null: all.")
    max_eval_examples: int | None = setting(
        None, "Use only the first N validation and test rows (file order, the same for every seed); null: all."
    )
    split_seed: int = setting(0, "Seed of the shuffle that splits a single data file (independent of `seed`).")


@dataclass
class TrainConfig:
    learning_rate: float | None = setting(
        None, "Peak learning rate; null takes the method's default (LoRA 3e-4, prompt tuning 3e-2, full "
              "fine-tuning 5e-5/3e-5/2e-5 for small/base/large)."
    )
    epochs: float = setting(3.0, "Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = setting(None, "Optimizer steps to run; null: derived from epochs.")
    batch_size: int = setting(8, "Examples per device per micro-batch.")
    grad_accum: int = setting(1, "Micro-batches accumulated into one optimizer step.")
    warmup_ratio: float = setting(0.1, "Share of the steps spent warming the learning rate up (linear schedule).")
    weight_decay: float = setting(0.01, "AdamW weight decay (not applied to biases and norm weights).")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm; 0 disables clipping.")
    precision: str = setting(
        "auto", "auto | fp32 | bf16 | fp16. auto: bf16 on a GPU that supports it, else fp32. fp16 is refused for "
                "T5 (it overflows)."
    )
    gradient_checkpointing: bool = setting(False, "Trade compute for memory (recomputes activations).")
    compile: bool = setting(False, "torch.compile the training forward pass (GPUs; the first steps compile).")
    eval_every: int = setting(
        0, "Validate every N optimizer steps (0: at the end of each epoch and of training); the best "
           "validation ROUGE-1 selects the checkpoint that is tested."
    )
    early_stopping_patience: int = setting(
        3, "Stop after this many validations without a better ROUGE-1 (0 disables early stopping)."
    )
    eval_max_examples: int | None = setting(
        64, "Validation during training uses at most this many validation examples (null: all)."
    )
    eval_num_beams: int = setting(1, "Beams for validation during training (1: greedy, cheap); the test "
                                     "split always uses generate.*.")
    validate_lone_candidate: bool = setting(
        False, "Validate even when a run validates only once, at its last step: that validation cannot change "
               "which weights are tested (the final ones), so by default it is skipped and its time saved."
    )
    save_every: int = setting(0, "Write a resumable checkpoint every N optimizer steps (0: never).")
    keep_checkpoints: int = setting(2, "How many of the newest checkpoints to keep on disk.")
    log_every: int = setting(1, "Write a train_log.jsonl line every N optimizer steps.")


@dataclass
class GenerateConfig:
    num_beams: int = setting(4, "Beam search width for test generation.")
    length_penalty: float = setting(2.0, "Beam search length penalty (>1 favours longer summaries).")
    no_repeat_ngram_size: int = setting(3, "Never repeat an n-gram of this size (0 disables).")
    min_new_tokens: int = setting(30, "Minimum generated tokens.")
    max_new_tokens: int = setting(256, "Maximum generated tokens.")
    batch_size: int = setting(8, "Examples per generation batch (batches are length-sorted).")


@dataclass
class MethodConfig:
    """Base of every method's settings; each method module subclasses it with its own fields."""

    name: str = setting("lora", "Adaptation method: lora | prompt_tuning | full.")

    def validate(self) -> list[str]:
        return []


@dataclass
class RunConfig:
    name: str | None = setting(None, "Run name; null: <method>-s<seed>.")
    seed: int = setting(42, "Seed of everything that trains (initialisation of new weights, data order, dropout).")
    output_dir: str | None = setting(None, "Run directory; null: runs/<name>.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.method.name}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.run_name)


SECTIONS = ("model", "data", "method", "train", "generate")


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


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file; a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MedsumError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise MedsumError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedsumError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _type_error(key: str, want: str, value: Any) -> str:
    return f"{key}: expected {want}, got {value!r}"


def coerce(key: str, annotation: Any, value: Any, errors: list[str]) -> Any:
    """Checks (and gently converts, e.g. '3e-4' -> 3e-4) one value against its annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, inner[0], value, errors)
    if value is None:
        errors.append(f"{key}: must not be null")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        errors.append(_type_error(key, "true or false", value))
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        errors.append(_type_error(key, "an integer", value))
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        errors.append(_type_error(key, "a number", value))
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        errors.append(_type_error(key, "a string", value))
    elif origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return [coerce(f"{key}[{i}]", args[0], v, errors) for i, v in enumerate(value)]
        errors.append(_type_error(key, "a list", value))
    else:
        return value
    return value


def build_dataclass(cls: type, values: dict, prefix: str, errors: list[str]) -> Any:
    """Builds ``cls`` from a mapping; unknown keys and bad types are appended to ``errors``."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            # a misspelled section (`trian.max_steps`) is reported by its full keys, so the nearest can be suggested
            nested = flatten(value, f"{dotted}.") if isinstance(value, dict) and value else {dotted: value}
            errors.extend(unknown_key_message(k) for k in nested)
            continue
        kwargs[key] = coerce(dotted, hints[key], value, errors)
    return cls(**kwargs)


def all_keys() -> list[str]:
    """Every dotted key a run config accepts, across all methods."""
    from medsum.methods import METHODS

    keys = [f.name for f in dataclasses.fields(RunConfig) if f.name not in SECTIONS]
    for section in ("model", "data", "train", "generate"):
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
    return {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "generate": GenerateConfig}[section]


# ---------------------------------------------------------------------------------------------- validation


def _validate_values(cfg: RunConfig, errors: list[str]) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    d, t, g = cfg.data, cfg.train, cfg.generate
    check(0 <= cfg.seed < 2**32, f"seed must be in [0, 2**32), got {cfg.seed}")
    for name, section in (("train", t), ("generate", g), ("method", cfg.method)):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            check(not isinstance(value, float) or math.isfinite(value), f"{name}.{f.name} must be finite, got {value}")
    check(cfg.model.dropout is None or 0 <= cfg.model.dropout < 1,
          f"model.dropout must be in [0, 1) or null, got {cfg.model.dropout}")
    check(d.max_source_tokens > 0, f"data.max_source_tokens must be > 0, got {d.max_source_tokens}")
    check(d.max_target_tokens > 0, f"data.max_target_tokens must be > 0, got {d.max_target_tokens}")
    for key in ("max_train_examples", "max_eval_examples"):
        value = getattr(d, key)
        check(value is None or value > 0, f"data.{key} must be > 0 or null, got {value}")
    check(t.learning_rate is None or t.learning_rate > 0, f"train.learning_rate must be > 0, got {t.learning_rate}")
    check(t.epochs > 0, f"train.epochs must be > 0, got {t.epochs}")
    check(t.max_steps is None or t.max_steps > 0, f"train.max_steps must be > 0 or null, got {t.max_steps}")
    check(t.batch_size > 0, f"train.batch_size must be > 0, got {t.batch_size}")
    check(t.grad_accum > 0, f"train.grad_accum must be > 0, got {t.grad_accum}")
    check(0 <= t.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    check(t.max_grad_norm >= 0, f"train.max_grad_norm must be >= 0, got {t.max_grad_norm}")
    check(t.precision in ("auto", "fp32", "bf16", "fp16"),
          f"train.precision must be auto, fp32, bf16 or fp16, got {t.precision!r}")
    for key in ("eval_every", "early_stopping_patience", "save_every", "log_every"):
        check(getattr(t, key) >= 0, f"train.{key} must be >= 0, got {getattr(t, key)}")
    check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    check(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    check(t.eval_max_examples is None or t.eval_max_examples > 0,
          f"train.eval_max_examples must be > 0 or null, got {t.eval_max_examples}")
    check(t.eval_num_beams >= 1, f"train.eval_num_beams must be >= 1, got {t.eval_num_beams}")
    check(g.num_beams >= 1, f"generate.num_beams must be >= 1, got {g.num_beams}")
    check(g.length_penalty > 0, f"generate.length_penalty must be > 0, got {g.length_penalty}")
    check(g.no_repeat_ngram_size >= 0, f"generate.no_repeat_ngram_size must be >= 0, got {g.no_repeat_ngram_size}")
    check(g.max_new_tokens > 0, f"generate.max_new_tokens must be > 0, got {g.max_new_tokens}")
    check(0 <= g.min_new_tokens <= g.max_new_tokens,
          f"generate.min_new_tokens must be in [0, generate.max_new_tokens], got {g.min_new_tokens}")
    check(g.batch_size > 0, f"generate.batch_size must be > 0, got {g.batch_size}")
    errors.extend(cfg.method.validate())


def config_from_dict(tree: dict, source: str = "config") -> RunConfig:
    """Builds and validates a RunConfig from a nested mapping; all problems are reported in one error."""
    from medsum.methods import METHODS

    errors: list[str] = []
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in tree.items():
        if key in SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                errors.append(f"{key}: expected a mapping of {key}.* settings, got {value!r}")
                continue
            sections[key] = value
        else:
            top[key] = value
    cfg = build_dataclass(RunConfig, top, "", errors)
    for section in ("model", "data", "train", "generate"):
        values = sections.get(section, {})
        setattr(cfg, section, build_dataclass(_section_class(section), values, f"{section}.", errors))

    method_values = dict(sections.get("method", {}))
    method_name = method_values.get("name", MethodConfig.name)
    if not isinstance(method_name, str) or method_name not in METHODS:
        close = difflib.get_close_matches(str(method_name), list(METHODS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        errors.append(f"method.name: unknown method {method_name!r} (known: {', '.join(METHODS)}){hint}")
    else:
        method_cls = METHODS[method_name].config_class
        method_keys = {f.name for f in dataclasses.fields(method_cls)}
        for key in list(method_values):
            if key not in method_keys and f"method.{key}" in all_keys():
                errors.append(f"method.{key} is not a setting of method {method_name} "
                              f"(its settings: {', '.join(sorted(method_keys - {'name'})) or 'none'})")
                del method_values[key]
        cfg.method = build_dataclass(method_cls, method_values, "method.", errors)
    try:  # value checks run even after unknown keys, so that every problem is reported at once
        _validate_values(cfg, errors)
    except TypeError:  # a value of the wrong type, already reported
        pass
    if errors:
        raise MedsumError(f"{source}: " + "; ".join(errors))
    return cfg


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
    from medsum.methods import METHODS

    rows = []
    for f in dataclasses.fields(RunConfig):
        if f.name not in SECTIONS:
            rows.append((f.name, f.default, f.metadata.get("help", "")))
    for section in ("model", "data"):
        rows += _section_rows(section, _section_class(section))
    rows.append(("method.name", MethodConfig.name, MethodConfig.__dataclass_fields__["name"].metadata["help"]))
    for name, method in METHODS.items():
        for f in dataclasses.fields(method.config_class):
            if f.name != "name":
                rows.append((f"method.{f.name}", _default(f), f"[{name}] " + f.metadata.get("help", "")))
    for section in ("train", "generate"):
        rows += _section_rows(section, _section_class(section))
    return [(key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip(), text)
            for key, default, text in rows]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _section_rows(section: str, cls: type) -> list[tuple[str, Any, str]]:
    return [(f"{section}.{f.name}", _default(f), f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


def markdown_reference() -> str:
    """The README's config reference table (a test keeps the README equal to this)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, text in help_lines():
        rows.append(f"| `{key}` | `{default}` | {text.replace('|', '/')} |")
    return "\n".join(rows)
