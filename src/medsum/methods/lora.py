"""LoRA (Hu et al., 2021) through PEFT: low-rank adapters on the target modules (attention query/value by default),
with the DoRA (Liu et al., 2024) and rsLoRA (Kalajdzievski, 2023) variants and PiSSA / OLoRA initialisation."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting

# medsum's name -> PEFT's init_lora_weights. kaiming is PEFT's default (True: the reference implementation's
# Kaiming-uniform A, zero B), so the default computes what medsum always did.
INITS = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# initialisations that change the base weights (the residual after the principal / orthonormal part)
CONVERTED_INITS = ("pissa", "olora")


@dataclass
class LoraConfig(MethodConfig):
    name: str = "lora"
    r: int = setting(16, "LoRA rank.", bound=Bound(1), names=Names(run="r", short="r", title="LoRA rank r"))
    alpha: float = setting(32, "LoRA scaling numerator (the update is scaled by alpha / r).",
                           bound=Bound(0, low_open=True))
    dropout: float = setting(0.1, "Dropout on the LoRA input.", bound=Bound(0, 1, high_open=True),
                             names=Names(run="drop"))
    target_modules: list[str] | None = targets.target_modules_setting()
    use_dora: bool = setting(False, "DoRA: split the update into magnitude and direction (Liu et al., 2024).",
                             names=Names(run="dora", short="dora", title="DoRA"))
    use_rslora: bool = setting(False, "rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r.",
                               names=Names(run="rslora", short="rslora", title="rsLoRA"))
    init: str = setting(
        "kaiming", "Adapter initialisation: kaiming (PEFT's default: Kaiming-uniform A, zero B), gaussian, pissa "
                   "(principal singular vectors, Meng et al., 2024) or olora (orthonormal, Büyükakyüz, 2024). "
                   "pissa/olora runs save a plain LoRA adapter (rank 2r) for the unmodified base model.",
        names=Names(run="init", short="init", title="LoRA initialisation"))

    def validate(self) -> list[str]:
        errors = targets.target_errors(self.target_modules)
        if self.init not in INITS:
            errors.append(f"method.init must be one of {', '.join(INITS)}, got {self.init!r}")
        return errors


def apply(model, cfg: LoraConfig, ctx: ModelContext):
    from peft import LoraConfig as PeftLoraConfig

    chosen = targets.resolve_targets(cfg.target_modules, ctx.family)
    extra = {"use_dora": True} if cfg.use_dora else {}
    extra |= {"use_rslora": True} if cfg.use_rslora else {}
    extra |= {} if cfg.init == "kaiming" else {"init_lora_weights": INITS[cfg.init]}
    model = targets.wrap(model, cfg, PeftLoraConfig, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                         target_modules=targets.peft_targets(chosen), **extra)
    if cfg.init in CONVERTED_INITS:
        # the starting adapter, needed at save time to turn the trained one into a plain LoRA adapter
        model.medsum_initial_adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return model


def save(model, folder: Path) -> None:
    """Saves the adapter; a PiSSA/OLoRA adapter is converted to plain LoRA for the unmodified base
    (``path_initial_model_for_weight_conversion``): the base model of the run stays the original one."""
    initial = getattr(model, "medsum_initial_adapter", None)
    if initial is None:
        model.save_pretrained(folder)
        return
    with tempfile.TemporaryDirectory() as scratch:
        start = Path(scratch) / "initial"
        _save_initial(model, initial, start)
        model.save_pretrained(folder, path_initial_model_for_weight_conversion=str(start))


def _save_initial(model, initial: dict, folder: Path) -> None:
    import torch

    trained = {n: p.detach().clone() for n, p in model.named_parameters() if n in initial}
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True  # as PEFT's PiSSA recipe: save unconverted
    try:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in initial:
                    parameter.copy_(initial[name])
            model.save_pretrained(folder)
            for name, parameter in model.named_parameters():
                if name in trained:
                    parameter.copy_(trained[name])
    finally:
        config.init_lora_weights = init


def countable(cfg: LoraConfig) -> LoraConfig:
    # PiSSA/OLoRA decompose real weights (impossible on the meta device) and change values, not counts
    return dataclasses.replace(cfg, init="kaiming")


def check_saved(tensors: dict) -> str | None:
    lora_b = [tensor for key, tensor in tensors.items() if "lora_B" in key]
    if lora_b and not any(tensor.any() for tensor in lora_b):
        # loaded correctly, yet a no-op: e.g. model selection kept a checkpoint from before the first real update
        return "every lora_B weight is zero, so this adapter gives the base model's output"
    return None


def default_learning_rate(model_name: str) -> float:
    return 3e-4


METHOD = Method(LoraConfig, "LoRA", apply, default_learning_rate, "3e-4 (MISSION.md: the Flan-T5 study)",
                saves_adapter=True, describe=targets.describe, resolve=targets.resolve, countable=countable,
                check_saved=check_saved, trains="low-rank adapters A, B (DoRA: and a magnitude vector) on the "
                "target modules", roles=targets.PRESETS["attention"], save=save)
