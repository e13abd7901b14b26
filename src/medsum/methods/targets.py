"""What the PEFT methods share: target modules chosen by role, and wrapping a model with a PEFT config.

A preset names roles of the model-family table (``models.ModuleRoles``), so one setting adapts the same parts of
T5, BART, PEGASUS and LongT5. Each method passes its settings to PEFT's own config class, so PEFT validates them;
what PEFT refuses becomes one line naming the method.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from medsum.errors import MedsumError
from medsum.settings import setting

if TYPE_CHECKING:
    from medsum.models import ModelFamily

PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("query", "value"),
    "attention_all": ("query", "key", "value", "output"),
    "attention_ffn": ("query", "key", "value", "output", "feed_forward"),
}
ALL_LINEAR = "all-linear"


def target_modules_setting(default: str = "attention") -> Any:
    return setting(
        None, f"Modules to adapt: module names ([q, k] for T5), or one preset by the family's roles: attention "
              f"(query/value: [q, v] for T5, [q_proj, v_proj] for BART), attention_all (query/key/value/output), "
              f"attention_ffn (those and the feed-forward), all-linear (every linear layer but the output head); "
              f"null: {default}."
    )


def target_errors(chosen: list[str] | None) -> list[str]:
    """A preset stands alone; an empty list names nothing."""
    if chosen is None:
        return []
    if not chosen:
        return ["method.target_modules must name at least one module (or be null)"]
    presets = [name for name in chosen if name in PRESETS or name == ALL_LINEAR]
    if presets and len(chosen) > 1:
        return [f"method.target_modules: the preset {presets[0]} stands alone, got {chosen}"]
    return []


def resolve_targets(targets: list[str] | None, family: ModelFamily, default: str = "attention") -> list[str]:
    """Module names for ``targets`` (null: the ``default`` preset); all-linear stays as PEFT's own keyword."""
    chosen = [default] if targets is None else targets
    if len(chosen) == 1 and chosen[0] in PRESETS:
        return [name for role in PRESETS[chosen[0]] for name in getattr(family.modules, role)]
    return list(chosen)


def resolve(cfg: Any, family: ModelFamily) -> Any:
    """The method config with its target_modules preset (or null) replaced by module names."""
    return dataclasses.replace(cfg, target_modules=resolve_targets(cfg.target_modules, family))


def peft_targets(targets: list[str]) -> list[str] | str:
    return ALL_LINEAR if targets == [ALL_LINEAR] else targets


def wrap(model, cfg: Any, peft_config_class: type, **settings: Any):
    """``get_peft_model`` with ``peft_config_class(task_type=SEQ_2_SEQ_LM, **settings)``; PEFT's refusal of a
    setting (or of the model) is a MedsumError naming the method and its targets."""
    from peft import TaskType, get_peft_model

    try:
        return get_peft_model(model, peft_config_class(task_type=TaskType.SEQ_2_SEQ_LM, **settings))
    except (ValueError, TypeError, NotImplementedError) as err:
        targets = settings.get("target_modules")
        where = f"method.name={cfg.name}" + (f", method.target_modules={targets}" if targets is not None else "")
        raise MedsumError(f"{where}: {str(err).splitlines()[0]}") from None


def adapted_modules(model) -> list[str]:
    """The names (last part) of the modules the PEFT method wrapped, as recorded in metrics.json."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, BaseTunerLayer)})


def describe(model, cfg: Any) -> dict:
    return {"resolved_target_modules": adapted_modules(model)}
