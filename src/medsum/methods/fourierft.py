"""FourierFT (Gao et al., 2024) through PEFT: the weight update is the inverse Fourier transform of a few learned
spectral coefficients at fixed random frequencies."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class FourierftConfig(MethodConfig):
    name: str = "fourierft"
    n_frequency: int = setting(1000, "Learned spectral coefficients per module (at most in x out features).",
                               bound=Bound(1), names=Names(run="nf", short="n", title="FourierFT frequencies"))
    scaling: float = setting(150.0, "Scale of the update (the FourierFT paper's 150 for language models).",
                             bound=Bound(0, low_open=True))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        return targets.target_errors(self.target_modules)


def apply(model, cfg: FourierftConfig, ctx: ModelContext):
    from peft import FourierFTConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    return targets.wrap(model, cfg, FourierFTConfig, n_frequency=cfg.n_frequency, scaling=cfg.scaling,
                        target_modules=targets.peft_targets(chosen))


def default_learning_rate(model_name: str) -> float:
    return 3e-3


METHOD = Method(FourierftConfig, "FourierFT", apply, default_learning_rate,
                "3e-3 (medsum's choice, untuned: spectral coefficients need IA3-like steps)", saves_adapter=True,
                describe=targets.describe, resolve=targets.resolve,
                trains="spectral coefficients per target module", roles=targets.PRESETS["attention"])
