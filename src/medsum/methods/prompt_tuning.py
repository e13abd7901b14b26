"""Prompt tuning (Lester et al., 2021) through PEFT: trainable soft-prompt embeddings fed to the encoder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class PromptTuningConfig(MethodConfig):
    name: str = "prompt_tuning"
    num_virtual_tokens: int = setting(
        20, "Soft prompt length in tokens.", bound=Bound(1),
        names=Names(run="pt", short="tokens", title="prompt tokens", axis="prompt length (virtual tokens)"))
    init: str = setting("text", "text: initialise the prompt from the embeddings of init_text; random: at random.")
    init_text: str = setting("Summarize the following biomedical article:",
                             "Text whose token embeddings initialise the prompt (init: text).")

    def validate(self) -> list[str]:
        errors = []
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


def countable(cfg: PromptTuningConfig) -> PromptTuningConfig:
    # text initialisation changes values, not counts, and would need the tokenizer: count a random init
    return dataclasses.replace(cfg, init="random")


def default_learning_rate(model_name: str) -> float:
    # Prompt tuning needs a far larger step than LoRA on Flan-T5 (peft #386; the study used 3e-2).
    return 3e-2


REPORT_NOTE = (
    "medsum trains and counts only the encoder's soft prompt, n_tokens × d_model (20 × 1,024 = 20,480 on "
    "Flan-T5-Large). The original study's code reported twice that (40,960) because PEFT also allocates decoder "
    "prompts that seq2seq prompt tuning never uses (PEFT PR #150)."
)
METHOD = Method(PromptTuningConfig, "prompt tuning", apply, default_learning_rate,
                "3e-2 (MISSION.md: the Flan-T5 study; peft #386)", saves_adapter=True, countable=countable,
                report_note=REPORT_NOTE, trains="the encoder's soft-prompt embeddings")
