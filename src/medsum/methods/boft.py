"""BOFT (Liu et al., 2024) through PEFT: orthogonal fine-tuning with butterfly-factorised rotations."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class BoftConfig(MethodConfig):
    name: str = "boft"
    block_size: int = setting(4, "Size of the butterfly blocks (must divide the target's input width).",
                              bound=Bound(1), names=Names(run="b", short="block", title="BOFT block size"))
    n_butterfly_factor: int = setting(1, "Butterfly factors (1: plain block-diagonal OFT).", bound=Bound(1))
    dropout: float = setting(0.0, "Multiplicative dropout on the rotation blocks.", bound=Bound(0, 1, high_open=True))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: BoftConfig, ctx: ModelContext):
    from peft import BOFTConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, BOFTConfig, boft_block_size=cfg.block_size, boft_block_num=0,
                        boft_n_butterfly_factor=cfg.n_butterfly_factor, boft_dropout=cfg.dropout,
                        target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(BoftConfig, "BOFT", apply, default_learning_rate, "3e-4 (LoRA's: no published seq2seq rate; "
                "untuned)", saves_adapter=True, describe=targets.describe, resolve=targets.resolve,
                trains="butterfly-factorised orthogonal rotations of the target weights",
                roles=targets.PRESETS["attention"])
