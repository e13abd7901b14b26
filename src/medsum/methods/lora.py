"""LoRA (Hu et al., 2021) through PEFT: low-rank adapters on the attention projections."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.config import MethodConfig, setting
from medsum.errors import MedsumError
from medsum.methods.base import Method, ModelContext


@dataclass
class LoraConfig(MethodConfig):
    name: str = setting("lora", "Adaptation method: lora | prompt_tuning | full.")
    r: int = setting(16, "LoRA rank.")
    alpha: float = setting(32, "LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = setting(0.1, "Dropout on the LoRA input.")
    target_modules: list[str] | None = setting(
        None, "Modules to adapt; null takes the model family's attention query/value ([q, v] for T5); "
              "[all-linear] adapts every linear layer but the output head."
    )

    def validate(self) -> list[str]:
        errors = []
        if self.r < 1:
            errors.append(f"method.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            errors.append(f"method.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            errors.append(f"method.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            errors.append("method.target_modules must name at least one module (or be null)")
        return errors


def apply(model, cfg: LoraConfig, ctx: ModelContext):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    targets = list(cfg.target_modules or ctx.default_lora_targets)
    peft_config = PeftLoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:
        raise MedsumError(f"method.target_modules={targets}: {str(err).splitlines()[0]}") from None


def describe(model, cfg: LoraConfig) -> dict:
    targets = model.peft_config["default"].target_modules
    return {"resolved_target_modules": sorted(targets) if not isinstance(targets, str) else targets}


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method("lora", LoraConfig, apply, default_learning_rate, saves_adapter=True, describe=describe)
