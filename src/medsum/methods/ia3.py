"""IA3 (Liu et al., 2022, "T-Few"): learned vectors that rescale the attention keys and values and the input of
the feed-forward output projection, through PEFT."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import MethodConfig, setting

if TYPE_CHECKING:
    from medsum.models import ModelFamily

ROLES = ("key", "value", "feed_forward_output")


@dataclass
class IA3Config(MethodConfig):
    name: str = "ia3"
    target_modules: list[str] | None = setting(
        None, "Modules to rescale; null takes the family's attention key/value and feed-forward output "
              "([k, v, wo] for T5, [k_proj, v_proj, fc2] for BART), as in the IA3 paper. The family's "
              "feed-forward modules among them are rescaled at their input, the others at their output.")


def resolve(cfg: IA3Config, family: ModelFamily) -> IA3Config:
    if cfg.target_modules is not None:
        return cfg
    return dataclasses.replace(cfg, target_modules=[n for role in ROLES for n in getattr(family.modules, role)])


def apply(model, cfg: IA3Config, ctx: ModelContext):
    from peft import IA3Config as PeftIA3Config

    chosen = resolve(cfg, ctx.family).target_modules
    feed_forward = [name for name in chosen if name in ctx.family.modules.feed_forward]
    return targets.wrap(model, cfg, PeftIA3Config, target_modules=chosen, feedforward_modules=feed_forward)


def default_learning_rate(model_name: str) -> float:
    return 3e-3


METHOD = Method(IA3Config, "IA3", apply, default_learning_rate, "3e-3 (the IA3 paper, T-Few on T0)",
                saves_adapter=True, describe=targets.describe, resolve=resolve,
                trains="scaling vectors on attention keys/values and the feed-forward", roles=ROLES)
