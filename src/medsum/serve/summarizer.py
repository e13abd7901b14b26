"""Load a finished run directory as a summariser that applies the run's own prefix, truncation and generation
settings.

Adapter runs are checked after loading: PEFT only warns when an adapter file lacks tensors, and a served adapter
that silently failed to load returns the base model's output (PITFALLS.md, peft #1468).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.config import GENERATION_SETTINGS, GenerateConfig, RunConfig, load_run_config
from medsum.errors import MedsumError
from medsum.evaluate import generate_texts, generation_kwargs
from medsum.methods import METHODS, Method
from medsum.settings import Bound, serve_bound

ADAPTER_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class RequestBound:
    """The values a caller may choose for one generation setting (declared in ``config.GenerateConfig``)."""

    kind: type
    bound: Bound

    def describe(self) -> str:
        return f"{'an integer' if self.kind is int else 'a number'} {self.bound.describe()}"


def _request_bounds() -> dict[str, RequestBound]:
    hints = typing.get_type_hints(GenerateConfig)
    return {f.name: RequestBound(hints[f.name], serve_bound(f)) for f in dataclasses.fields(GenerateConfig)
            if f.name in GENERATION_SETTINGS}


GENERATION_BOUNDS = _request_bounds()


def _checked_setting(key: str, value: Any) -> int | float:
    if key not in GENERATION_BOUNDS:
        raise MedsumError(f"unknown generation setting {key!r} (known: {', '.join(GENERATION_BOUNDS)})")
    bound = GENERATION_BOUNDS[key]
    numeric = isinstance(value, int) if bound.kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not numeric or not math.isfinite(value) or not bound.bound.holds(value):
        raise MedsumError(f"{key} must be {bound.describe()}, got {value!r}")
    return value


def resolve_generation(defaults: dict[str, Any], overrides: dict[str, Any],
                       lower_min: bool = False) -> dict[str, Any]:
    """generate() keyword arguments: the run's settings with the caller's (checked) overrides on top.

    A smaller max_new_tokens alone lowers the run's min_new_tokens with it, so `max_new_tokens=16` works on a run
    tested with min_new_tokens=30; an explicit min above the max is refused, or with ``lower_min`` (the HTTP
    service, whose schema cannot state a relation between two fields) lowered to the max.
    """
    given = {key: _checked_setting(key, value) for key, value in overrides.items() if value is not None}
    values = {**defaults, **given}
    if "min_new_tokens" not in given or lower_min:
        values["min_new_tokens"] = min(values["min_new_tokens"], values["max_new_tokens"])
    if values["min_new_tokens"] > values["max_new_tokens"]:
        raise MedsumError(f"min_new_tokens ({values['min_new_tokens']}) must not exceed max_new_tokens "
                          f"({values['max_new_tokens']})")
    return generation_kwargs(**values)


def checked_texts(texts: list[Any]) -> list[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise MedsumError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise MedsumError(f"text {i} is empty")
    return texts


# ---------------------------------------------------------------------------------------------- run directory


def read_run(run_dir: str | Path) -> RunConfig:
    """The resolved config of a finished run; a missing or unfinished run is a one-line error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedsumError(f"run directory not found: {run_dir}")
    if not (run_dir / rundir.CONFIG).is_file() or not rundir.is_finished(run_dir):
        raise MedsumError(f"{run_dir} is not a finished run (no config.yaml or metrics.json): train it first, "
                          f"or pick a finished run (medsum study status DIR lists them)")
    return load_run_config(run_dir / rundir.CONFIG)


def base_model_source(run_dir: Path, cfg: RunConfig) -> str:
    """A tiny model's run keeps its base in base_model/; other runs name a hub id or local directory."""
    local = run_dir / rundir.BASE_MODEL
    if local.is_dir():
        return str(local)
    from medsum.models import is_tiny

    if is_tiny(cfg.model.name):
        raise MedsumError(f"{run_dir}: base_model/ is missing (a model.name={cfg.model.name} run keeps its base "
                          f"model there)")
    return cfg.model.name


def load_model(run_dir: Path, cfg: RunConfig, fp32: bool = False):
    """The trained model of a run: base + checked PEFT adapter, or the fully fine-tuned model."""
    from medsum.models import load_pretrained

    method = METHODS[cfg.method.name]
    if not method.saves_adapter:
        model = load_pretrained(str(run_dir / rundir.MODEL))
        return model.float() if fp32 else model
    base = load_pretrained(base_model_source(run_dir, cfg))
    return load_adapter(base.float() if fp32 else base, run_dir / rundir.ADAPTER, method)


def load_adapter(base, adapter_dir: Path, method: Method):
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise MedsumError(f"{adapter_dir}: no adapter_config.json (the run's adapter is missing)")
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise MedsumError(f"{adapter_dir}: cannot load the adapter ({str(err).splitlines()[0][:200]})") from None
    check_adapter_loaded(model, adapter_dir, method)
    method.prepare_generation(model)
    return model


def check_adapter_loaded(model, adapter_dir: Path, method: Method) -> None:
    """Raises unless every tensor of the adapter file is in the model, equal, and the model expects no other;
    warns when the method finds that the adapter, though loaded, cannot change the output."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    path = adapter_dir / ADAPTER_FILE
    if not path.is_file():
        raise MedsumError(f"{path} not found: the run's adapter weights are missing")
    saved = load_file(str(path))
    loaded = get_peft_model_state_dict(model)
    missing = sorted(loaded.keys() - saved.keys())
    if not saved or missing:
        raise MedsumError(f"{path} holds {len(saved)} of the adapter's {len(loaded)} tensors "
                          f"(missing e.g. {missing[:1]}): the model would answer like its base model")
    for key, tensor in saved.items():
        if key not in loaded or not torch.equal(tensor.to(loaded[key].dtype), loaded[key].detach().cpu()):
            raise MedsumError(f"{path}: tensor {key} did not load into the model")
    problem = method.check_saved(saved)
    if problem:
        warnings.warn(f"{path}: {problem}", stacklevel=2)


# ---------------------------------------------------------------------------------------------- summariser


class Summarizer:
    """Summaries from a trained run: ``medsum.load(run_dir).summarize(text, num_beams=2)``."""

    def __init__(self, model, tokenizer, cfg: RunConfig, device: str, batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one generate at a time: the API may be called from several threads

    @property
    def prefix(self) -> str:
        return self.cfg.data.prefix or ""

    @property
    def default_generation(self) -> dict[str, Any]:
        return {key: getattr(self.cfg.generate, key) for key in GENERATION_BOUNDS}

    def generation_settings(self, lower_min: bool = False, **overrides: Any) -> dict[str, Any]:
        return resolve_generation(self.default_generation, overrides, lower_min)

    def summarize(self, text: str | list[str], **overrides: Any) -> str | list[str]:
        """One summary for a string, a list of summaries for a list; ``overrides`` are generation settings."""
        if not isinstance(text, (str, list, tuple)):
            raise MedsumError(f"summarize() takes a string or a list of strings, got a {type(text).__name__}")
        texts = checked_texts([text] if isinstance(text, str) else list(text))
        summaries = self.generate(texts, self.generation_settings(**overrides))
        return summaries[0] if isinstance(text, str) else summaries

    def generate(self, texts: list[str], settings: dict[str, Any]) -> list[str]:
        """Summaries of already checked texts with already checked generate() settings."""
        if not texts:
            return []
        encoded = self.tokenizer([self.prefix + text for text in texts], max_length=self.cfg.data.max_source_tokens,
                                 truncation=True)["input_ids"]
        with self._lock:
            summaries, _ = generate_texts(self.model, self.tokenizer, encoded, settings, self.batch_size, self.device)
        return summaries


def load_summarizer(run_dir: str | Path, device: str | None = None, batch_size: int | None = None) -> Summarizer:
    """A summariser for a finished run directory (on the GPU when there is one)."""
    import torch

    from medsum.models import load_tokenizer

    run_dir = Path(run_dir)
    cfg = read_run(run_dir)
    if batch_size is not None and batch_size < 1:
        raise MedsumError(f"batch size must be >= 1, got {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(str(run_dir / rundir.TOKENIZER))
    model = load_model(run_dir, cfg).to(device).eval()
    return Summarizer(model, tokenizer, cfg, device, batch_size or cfg.generate.batch_size)
