"""Parameter accounting without weights: the model is built on PyTorch's meta device, the method applied, and the
parameters counted. The same counting code (``models.parameter_report``) fills ``params`` in every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsum.config import RunConfig
from medsum.methods import METHODS, ModelContext
from medsum.models import count_parameters, family_of, is_tiny, load_config, meta_model, parameter_report
from medsum.tiny_models import resolve_model_source


def count_for_config(cfg: RunConfig) -> dict[str, Any]:
    """``{"base_params", "trainable_params", "total_params", "trainable_pct"}`` for cfg's model and method.

    ``total_params`` is the base plus what the method adds; ``trainable_pct = 100 * trainable / total``.
    """
    name = cfg.model.name
    if is_tiny(name):  # a tiny model is defined by its training text: build (or reuse) it from the data
        from medsum.data import load_splits

        name = resolve_model_source(name, load_splits(cfg.data)["train"])
    method = METHODS[cfg.method.name]
    method.check_family(family_of(load_config(name)))
    model = meta_model(name)
    family = family_of(model.config)
    base = count_parameters(model)["total"]
    method_cfg = method.countable(method.resolve(cfg.method, family))
    tokenizer_path = name if Path(name).is_dir() else cfg.model.name
    wrapped = method.apply(model, method_cfg, ModelContext(cfg.model.name, tokenizer_path, family))
    report = parameter_report(base, wrapped)
    return {"model": cfg.model.name, "method": cfg.method.name, "base_params": report["base"],
            "trainable_params": report["trainable"], "total_params": report["total"],
            "trainable_pct": report["trainable_pct"]}
