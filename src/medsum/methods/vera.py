"""VeRA (Kopiczko et al., 2024) through PEFT: one frozen random low-rank pair shared by every target module, and two
trainable scaling vectors per module."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class VeraConfig(MethodConfig):
    name: str = "vera"
    r: int = setting(256, "Rank of the shared random matrices (VeRA trains r + out_features per module).",
                     bound=Bound(1), names=Names(run="r", short="r", title="VeRA rank r"))
    dropout: float = setting(0.0, "Dropout on the adapter input.", bound=Bound(0, 1, high_open=True))
    d_initial: float = setting(0.1, "Initial value of the scaling vector d.", bound=Bound(0))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: VeraConfig, ctx: ModelContext):
    from peft import VeraConfig as PeftVeraConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, PeftVeraConfig, r=cfg.r, vera_dropout=cfg.dropout, d_initial=cfg.d_initial,
                        target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 4e-3


METHOD = Method(VeraConfig, "VeRA", apply, default_learning_rate,
                "4e-3 (the VeRA paper's instruction-tuning rate, 10x its LoRA rate)", saves_adapter=True,
                describe=targets.describe, resolve=targets.resolve,
                trains="two scaling vectors per target module (shared random matrices frozen)",
                roles=targets.PRESETS["attention"])
