"""Prefix tuning (Li and Liang, 2021) through PEFT: trainable key/value prefixes prepended in every attention layer
of the encoder and the decoder."""

from __future__ import annotations

from dataclasses import dataclass

from medsum.methods import targets
from medsum.methods.base import Method, ModelContext
from medsum.settings import Bound, MethodConfig, Names, setting


@dataclass
class PrefixTuningConfig(MethodConfig):
    name: str = "prefix_tuning"
    num_virtual_tokens: int = setting(
        20, "Prefix length in tokens (per attention layer).", bound=Bound(1),
        names=Names(run="pre", short="tokens", title="prefix tokens", axis="prefix length (virtual tokens)"))
    projection: bool = setting(False, "Reparametrise the prefix through a two-layer MLP (Li and Liang's "
                                      "training trick; more trainable parameters).")
    encoder_hidden_size: int = setting(512, "Hidden width of that MLP (projection: true).", bound=Bound(1))


def apply(model, cfg: PrefixTuningConfig, ctx: ModelContext):
    from peft import PrefixTuningConfig as PeftPrefixTuningConfig

    return targets.wrap(model, cfg, PeftPrefixTuningConfig, num_virtual_tokens=cfg.num_virtual_tokens,
                        prefix_projection=cfg.projection, encoder_hidden_size=cfg.encoder_hidden_size)


def prepare_generation(model) -> None:
    """Makes ``generate`` use the prefix. PEFT (0.21) hands the prefix to the model as ``past_key_values`` on the
    first generation step, but transformers 5 takes the cache as ``cache`` and silently drops the old name: the
    model then generates exactly what its base model would (the forward pass, used in training, is unaffected)."""
    original = model.prepare_inputs_for_generation

    def prepare_inputs_for_generation(*args, **kwargs):
        inputs = original(*args, **kwargs)
        prefix = inputs.pop("past_key_values", None)
        cache = inputs.get("cache")
        if prefix is not None and cache is not None and cache.get_seq_length() == 0:
            inputs["cache"] = prefix
        elif prefix is not None and "cache" not in inputs:
            inputs["past_key_values"] = prefix  # a transformers release that still uses the old name
        return inputs

    model.prepare_inputs_for_generation = prepare_inputs_for_generation


def default_learning_rate(model_name: str) -> float:
    return 1e-2


METHOD = Method(PrefixTuningConfig, "prefix tuning", apply, default_learning_rate,
                "1e-2 (PEFT's prefix-tuning guide for seq2seq, T5)", saves_adapter=True,
                trains="key/value prefixes of every attention layer", prepare_generation=prepare_generation)
