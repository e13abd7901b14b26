"""Full fine-tuning: every weight of the model trains."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods.base import Method, ModelContext
from medsum.settings import MethodConfig


@dataclass
class FullConfig(MethodConfig):
    name: str = "full"


def apply(model, cfg: FullConfig, ctx: ModelContext):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def default_learning_rate(model_name: str) -> float:
    # MISSION.md: 5e-5 / 3e-5 / 2e-5 for the small / base / large (and larger) checkpoints.
    name = model_name.rstrip("/").rsplit("/", 1)[-1].lower()  # the model's own name, not its folder path
    if "large" in name or "xl" in name:
        return 2e-5
    if "base" in name:
        return 3e-5
    return 5e-5


METHOD = Method(FullConfig, "full fine-tuning", apply, default_learning_rate, "5e-5/3e-5/2e-5 for small/base/large "
                "(MISSION.md)",
                saves_adapter=False, trains="every weight")
