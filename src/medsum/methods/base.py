"""The one interface every adaptation method implements: everything medsum knows about a method is asked here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medsum.models import ModelFamily


@dataclass(frozen=True)
class ModelContext:
    """What a method may need to know about the model it wraps, without assuming a model family."""

    model_name: str
    tokenizer_path: str
    family: ModelFamily  # the family's modules by role (attention query/key/value/output, feed-forward)


def _unchanged(cfg: Any, *_: Any) -> Any:
    return cfg


def _no_warning(tensors: dict[str, Any]) -> str | None:
    return None


@dataclass(frozen=True)
class Method:
    # the method's settings: a MethodConfig subclass whose `name` default is the method's registry name; its
    # fields' `names` say what run names, report tables and plot axes call them
    config_class: type
    label: str  # in prose and help text: "LoRA", "full fine-tuning"
    # apply(model, method_config, context) -> the model to train, with exactly the trainable parameters set
    apply: Callable[[Any, Any, ModelContext], Any]
    # default_learning_rate(model_name) -> float (MISSION.md's settings), and the same in words for --help
    default_learning_rate: Callable[[str], float]
    learning_rate_help: str
    # True: saves a PEFT adapter (adapter/); False: saves the whole model (model/)
    saves_adapter: bool
    # what apply() resolved (e.g. LoRA's target modules), recorded in metrics.json
    describe: Callable[[Any, Any], dict] = lambda model, cfg: {}
    # resolve(method_config, family) -> the config with its "null: the family's default" settings filled in,
    # as saved in the run's config.yaml
    resolve: Callable[[Any, ModelFamily], Any] = _unchanged
    # countable(method_config) -> settings giving the same parameter counts on a weightless (meta-device) model
    countable: Callable[[Any], Any] = _unchanged
    # check_saved(adapter tensors by name) -> why the loaded adapter cannot change the output, or None
    check_saved: Callable[[dict[str, Any]], str | None] = _no_warning
    # a note for study reports on how medsum treats the method (shown when the study ran it), or ""
    report_note: str = ""

    @property
    def name(self) -> str:
        return self.config_class.name
