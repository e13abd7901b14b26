"""The one interface every adaptation method implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelContext:
    """What a method may need to know about the model it wraps, without assuming a model family."""

    model_name: str
    tokenizer_path: str
    default_lora_targets: tuple[str, ...]


@dataclass(frozen=True)
class Method:
    name: str
    config_class: type
    # apply(model, method_config, context) -> the model to train, with exactly the trainable parameters set
    apply: Callable[[Any, Any, ModelContext], Any]
    # default_learning_rate(model_name) -> float (MISSION.md's settings)
    default_learning_rate: Callable[[str], float]
    # True: saves a PEFT adapter (adapter/); False: saves the whole model (model/)
    saves_adapter: bool
    # what apply() resolved (e.g. LoRA's target modules), recorded in metrics.json
    describe: Callable[[Any, Any], dict] = lambda model, cfg: {}
