"""The one interface every adaptation method implements: everything medsum knows about a method is asked here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsum.errors import MedsumError

if TYPE_CHECKING:
    from medsum.models import ModelFamily


@dataclass(frozen=True)
class ModelContext:
    """What a method may need to know about the model it wraps, without assuming a model family."""

    model_name: str
    tokenizer_path: str
    family: ModelFamily  # the family's modules by role (attention query/key/value/output, feed-forward)
    total_steps: int | None = None  # the run's optimizer steps (None when only counting parameters)


def _unchanged(cfg: Any, *_: Any) -> Any:
    return cfg


def _no_warning(tensors: dict[str, Any]) -> str | None:
    return None


def _no_step(model: Any, step: int) -> None:
    return None


def _no_preparation(model: Any) -> None:
    return None


def _save_pretrained(model: Any, folder: Path) -> None:
    model.save_pretrained(folder)


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
    # what trains, in a few words (`medsum methods`)
    trains: str = ""
    # the ModuleRoles fields the method adapts by default: a family whose table leaves one empty is refused
    roles: tuple[str, ...] = ()
    # after_optimizer_step(unwrapped model, 0-based step): called after every optimizer step, before the gradients
    # are cleared (AdaLoRA's rank allocation reads them); a no-op for every other method
    after_optimizer_step: Callable[[Any, int], None] = _no_step
    # prepare_generation(model): readies a model of this method, just wrapped or loaded from a run, to generate
    prepare_generation: Callable[[Any], None] = _no_preparation
    # save(trained model, folder): writes what the method trained (default: save_pretrained)
    save: Callable[[Any, Path], None] = _save_pretrained

    @property
    def name(self) -> str:
        return self.config_class.name

    def check_family(self, family: ModelFamily) -> None:
        """Refuses, before any weight is loaded, a family whose module table lacks a role the method adapts."""
        missing = [role for role in self.roles if not getattr(family.modules, role)]
        if missing:
            raise MedsumError(f"method {self.name} cannot serve model family {family.model_type}: medsum's family "
                              f"table names no {' or '.join(missing)} modules for it")
