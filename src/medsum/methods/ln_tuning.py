"""LayerNorm tuning (Zhao et al., 2024) through PEFT: only the layer norms' gains (and biases) train, each in a
trainable copy of the layer norm that the adapter saves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import MethodConfig, setting

if TYPE_CHECKING:
    from medsum.models import ModelFamily


@dataclass
class LnTuningConfig(MethodConfig):
    name: str = "ln_tuning"
    target_modules: list[str] | None = setting(
        None, "Layer norms to tune; null takes every layer norm of the family table (PEFT itself knows none for "
              "PEGASUS and LongT5).")


def resolve(cfg: LnTuningConfig, family: ModelFamily) -> LnTuningConfig:
    if cfg.target_modules is not None:
        return cfg
    return dataclasses.replace(cfg, target_modules=list(family.modules.layer_norm))


def apply(model, cfg: LnTuningConfig, ctx: ModelContext):
    from peft import LNTuningConfig

    return targets.wrap(model, cfg, LNTuningConfig, target_modules=resolve(cfg, ctx.family).target_modules)


def default_learning_rate(model_name: str) -> float:
    return 1e-3


METHOD = Method(LnTuningConfig, "LayerNorm tuning", apply, default_learning_rate,
                "1e-3 (medsum's choice, untuned: norm gains need larger steps than LoRA)", saves_adapter=True,
                describe=targets.describe, resolve=resolve, trains="the layer norms' weights", roles=("layer_norm",))
