"""HRA (Yuan et al., 2024) through PEFT: each target weight is multiplied by a chain of r learned Householder
reflections."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class HraConfig(MethodConfig):
    name: str = "hra"
    r: int = setting(8, "Number of Householder reflections per module (even: they start as the identity).",
                     bound=Bound(1), names=Names(run="r", short="r", title="HRA reflections r"))
    apply_gs: bool = setting(False, "Orthogonalise the reflection vectors (Gram-Schmidt).")
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: HraConfig, ctx: ModelContext):
    from peft import HRAConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, HRAConfig, r=cfg.r, apply_GS=cfg.apply_gs,
                        target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(HraConfig, "HRA", apply, default_learning_rate, "3e-4 (LoRA's: no published seq2seq rate; untuned)",
                saves_adapter=True, describe=targets.describe, resolve=targets.resolve,
                trains="Householder reflection vectors per target module", roles=targets.PRESETS["attention"])
