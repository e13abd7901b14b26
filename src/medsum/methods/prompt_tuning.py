"""Prompt tuning (Lester et al., 2021) through PEFT: trainable soft-prompt embeddings fed to the encoder."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.config import MethodConfig, setting
from medsum.methods.base import Method, ModelContext


@dataclass
class PromptTuningConfig(MethodConfig):
    name: str = setting("prompt_tuning", "Adaptation method: lora | prompt_tuning | full.")
    num_virtual_tokens: int = setting(20, "Soft prompt length in tokens.")
    init: str = setting("text", "text: initialise the prompt from the embeddings of init_text; random: at random.")
    init_text: str = setting("Summarize the following biomedical article:",
                             "Text whose token embeddings initialise the prompt (init: text).")

    def validate(self) -> list[str]:
        errors = []
        if self.num_virtual_tokens < 1:
            errors.append(f"method.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.init not in ("text", "random"):
            errors.append(f"method.init must be text or random, got {self.init!r}")
        if self.init == "text" and not self.init_text.strip():
            errors.append("method.init_text must not be empty when method.init is text")
        return errors


def apply(model, cfg: PromptTuningConfig, ctx: ModelContext):
    from peft import PromptTuningConfig as PeftPromptTuningConfig
    from peft import PromptTuningInit, TaskType, get_peft_model

    text_init = cfg.init == "text"
    peft_config = PeftPromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=cfg.num_virtual_tokens,
        # PEFT's default of 2 allocates decoder prompts that forward() and generate() never use: dead weights
        # that receive no gradient (PITFALLS.md, peft PR #150). Only the encoder prompt is trained and saved.
        num_transformer_submodules=1,
        prompt_tuning_init=PromptTuningInit.TEXT if text_init else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=cfg.init_text if text_init else None,
        tokenizer_name_or_path=ctx.tokenizer_path if text_init else None,
    )
    return get_peft_model(model, peft_config)


def default_learning_rate(model_name: str) -> float:
    # Prompt tuning needs a far larger step than LoRA on Flan-T5 (peft #386; the study used 3e-2).
    return 3e-2


METHOD = Method("prompt_tuning", PromptTuningConfig, apply, default_learning_rate, saves_adapter=True)
