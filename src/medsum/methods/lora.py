"""LoRA (Hu et al., 2021) through PEFT: low-rank adapters on the attention projections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medsum.errors import MedsumError
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting

if TYPE_CHECKING:
    from medsum.models import ModelFamily


@dataclass
class LoraConfig(MethodConfig):
    name: str = "lora"
    r: int = setting(16, "LoRA rank.", bound=Bound(1), names=Names(run="r", short="r", title="LoRA rank r"))
    alpha: float = setting(32, "LoRA scaling numerator (the update is scaled by alpha / r).",
                           bound=Bound(0, low_open=True))
    dropout: float = setting(0.1, "Dropout on the LoRA input.", bound=Bound(0, 1, high_open=True),
                             names=Names(run="drop"))
    target_modules: list[str] | None = setting(
        None, "Modules to adapt; null takes the model family's attention query/value ([q, v] for T5); "
              "[all-linear] adapts every linear layer but the output head."
    )

    def validate(self) -> list[str]:
        if self.target_modules is not None and not self.target_modules:
            return ["method.target_modules must name at least one module (or be null)"]
        return []


def resolve(cfg: LoraConfig, family: ModelFamily) -> LoraConfig:
    if cfg.target_modules is not None:
        return cfg
    return dataclasses.replace(cfg, target_modules=[*family.modules.query, *family.modules.value])


def apply(model, cfg: LoraConfig, ctx: ModelContext):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    targets = resolve(cfg, ctx.family).target_modules
    peft_config = PeftLoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise MedsumError(f"method.target_modules={targets}: {str(err).splitlines()[0]}") from None


def describe(model, cfg: LoraConfig) -> dict:
    targets = model.peft_config["default"].target_modules
    return {"resolved_target_modules": sorted(targets) if not isinstance(targets, str) else targets}


def check_saved(tensors: dict) -> str | None:
    lora_b = [tensor for key, tensor in tensors.items() if "lora_B" in key]
    if lora_b and not any(tensor.any() for tensor in lora_b):
        # loaded correctly, yet a no-op: e.g. model selection kept a checkpoint from before the first real update
        return "every lora_B weight is zero, so this adapter gives the base model's output"
    return None


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(LoraConfig, "LoRA", apply, default_learning_rate, "3e-4", saves_adapter=True, describe=describe,
                resolve=resolve, check_saved=check_saved)
