"""LoKr (Edalati et al., 2022; LyCORIS) through PEFT: the weight update is a Kronecker product of a small matrix
and a low-rank one."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class LokrConfig(MethodConfig):
    name: str = "lokr"
    r: int = setting(8, "Rank of the low-rank Kronecker factor.", bound=Bound(1),
                     names=Names(run="r", short="r", title="LoKr rank r"))
    alpha: float = setting(8, "Scaling numerator (the update is scaled by alpha / r).", bound=Bound(0, low_open=True))
    decompose_both: bool = setting(False, "Decompose the left Kronecker factor into low rank too.")
    decompose_factor: int = setting(-1, "Kronecker factor size (-1: as square as the weight allows).")
    rank_dropout: float = setting(0.0, "Dropout on the update's rows during training.",
                                  bound=Bound(0, 1, high_open=True))
    module_dropout: float = setting(0.0, "Probability of skipping a module's update during training.",
                                    bound=Bound(0, 1, high_open=True))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: LokrConfig, ctx: ModelContext):
    from peft import LoKrConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, LoKrConfig, r=cfg.r, alpha=cfg.alpha, decompose_both=cfg.decompose_both,
                        decompose_factor=cfg.decompose_factor, rank_dropout=cfg.rank_dropout,
                        module_dropout=cfg.module_dropout, target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(LokrConfig, "LoKr", apply, default_learning_rate,
                "3e-4 (LoRA's: no published seq2seq rate; untuned)", saves_adapter=True, describe=targets.describe,
                resolve=targets.resolve, trains="Kronecker factors (one low-rank) per target module",
                roles=targets.PRESETS["attention"])
