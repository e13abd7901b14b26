"""AdaLoRA (Zhang et al., 2023) through PEFT: SVD-form low-rank adapters whose rank budget is reallocated among the
target modules during training (``update_and_allocate`` after every optimizer step), over the run's steps."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class AdaLoraConfig(MethodConfig):
    name: str = "adalora"
    init_r: int = setting(12, "Starting rank of every adapter.", bound=Bound(1), names=Names(run="r0"))
    target_r: int = setting(8, "Average rank the budget is pruned to.", bound=Bound(1),
                            names=Names(run="r", short="r", title="AdaLoRA target rank"))
    alpha: float = setting(32, "Scaling numerator of the update.", bound=Bound(0, low_open=True))
    dropout: float = setting(0.1, "Dropout on the adapter input.", bound=Bound(0, 1, high_open=True))
    tinit: int = setting(0, "Optimizer steps of warm-up before the budget shrinks.", bound=Bound(0))
    tfinal: int = setting(0, "Optimizer steps at the end with the final budget fixed.", bound=Bound(0))
    delta_t: int = setting(1, "Optimizer steps between two budget allocations.", bound=Bound(1))
    target_modules: list[str] | None = targets.target_modules_setting()

    def validate(self) -> list[str]:
        errors = targets.target_errors(self.target_modules)
        if self.target_r > self.init_r:
            errors.append(f"method.target_r must be <= method.init_r ({self.init_r}), got {self.target_r}")
        return errors


def apply(model, cfg: AdaLoraConfig, ctx: ModelContext):
    from peft import AdaLoraConfig as PeftAdaLoraConfig

    # the schedule needs the run's steps; counting parameters (no run) takes any valid one: it changes no count
    total = ctx.total_steps or cfg.tinit + cfg.tfinal + 1
    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    model = targets.wrap(model, cfg, PeftAdaLoraConfig, init_r=cfg.init_r, target_r=cfg.target_r,
                         lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, tinit=cfg.tinit, tfinal=cfg.tfinal,
                         deltaT=cfg.delta_t, total_step=total, target_modules=targets.peft_targets(chosen))
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 2)[-2] == "ranknum":
            # a constant (the rank), frozen by PEFT; moving the adapter to the meta device (`medsum params`)
            # re-creates it trainable, which would count one parameter per module too many
            parameter.requires_grad_(False)
    return model


def after_optimizer_step(model, step: int) -> None:
    # PEFT's recipe: after optimizer.step(), before the gradients are cleared (the sensitivities read them)
    model.base_model.update_and_allocate(step)


def default_learning_rate(model_name: str) -> float:
    return 5e-4


REPORT_NOTE = ("medsum calls AdaLoRA's budget allocation after every optimizer step; a run resumed from a checkpoint "
               "restarts its sensitivity estimates (the masked ranks themselves are in the weights).")
METHOD = Method(AdaLoraConfig, "AdaLoRA", apply, default_learning_rate,
                "5e-4 (the AdaLoRA paper, BART-large on XSum and CNN/DailyMail)", saves_adapter=True,
                describe=targets.describe, resolve=targets.resolve, report_note=REPORT_NOTE,
                trains="SVD-form adapters (P, Λ, Q) with an adaptive rank budget",
                roles=targets.PRESETS["attention"], after_optimizer_step=after_optimizer_step)
