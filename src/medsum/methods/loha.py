"""LoHa (Hyeon-Woo et al., 2022; LyCORIS) through PEFT: the weight update is the Hadamard product of two low-rank
products."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class LohaConfig(MethodConfig):
    name: str = "loha"
    r: int = setting(8, "Rank of each of the two low-rank products.", bound=Bound(1),
                     names=Names(run="r", short="r", title="LoHa rank r"))
    alpha: float = setting(8, "Scaling numerator (the update is scaled by alpha / r).", bound=Bound(0, low_open=True))
    rank_dropout: float = setting(0.0, "Dropout on the update's rows during training.",
                                  bound=Bound(0, 1, high_open=True))
    module_dropout: float = setting(0.0, "Probability of skipping a module's update during training.",
                                    bound=Bound(0, 1, high_open=True))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: LohaConfig, ctx: ModelContext):
    from peft import LoHaConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, LoHaConfig, r=cfg.r, alpha=cfg.alpha, rank_dropout=cfg.rank_dropout,
                        module_dropout=cfg.module_dropout, target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(LohaConfig, "LoHa", apply, default_learning_rate,
                "3e-4 (LoRA's: no published seq2seq rate; untuned)", saves_adapter=True, describe=targets.describe,
                resolve=targets.resolve, trains="two pairs of low-rank factors per target module (Hadamard product)",
                roles=targets.PRESETS["attention"])
