"""OFT (Qiu et al., 2023) through PEFT: a learned block-diagonal orthogonal rotation of each target weight."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class OftConfig(MethodConfig):
    name: str = "oft"
    block_size: int = setting(32, "Size of the orthogonal blocks (must divide the target's input width).",
                              bound=Bound(1), names=Names(run="b", short="block", title="OFT block size"))
    coft: bool = setting(False, "Constrained OFT: keep the rotation within eps of the identity.")
    eps: float = setting(6e-5, "The COFT constraint radius (coft: true).", bound=Bound(0, low_open=True))
    module_dropout: float = setting(0.0, "Probability of skipping a module's rotation during training.",
                                    bound=Bound(0, 1, high_open=True))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: OftConfig, ctx: ModelContext):
    from peft import OFTConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, OFTConfig, r=0, oft_block_size=cfg.block_size, coft=cfg.coft, eps=cfg.eps,
                        module_dropout=cfg.module_dropout, target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(OftConfig, "OFT", apply, default_learning_rate, "3e-4 (LoRA's: no published seq2seq rate; untuned)",
                saves_adapter=True, describe=targets.describe, resolve=targets.resolve,
                trains="block-diagonal orthogonal rotations of the target weights", roles=targets.PRESETS["attention"])
