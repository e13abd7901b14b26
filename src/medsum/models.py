"""Models: the model-family table, loading (hub id, local directory, a tiny model's directory), and parameter
accounting.

Everything family-specific (input prefix, module names by role, fp16 safety, the offline tiny model's recipe,
which generation shortcuts are proven) lives in ``FAMILIES``, with the released checkpoints' configurations in
``shipped_configs``; the rest of medsum asks this table instead of assuming T5. The tiny models are built from
their recipes by ``tiny_models``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum.errors import MedsumError
from medsum.shipped_configs import SHIPPED_CONFIGS, check_against_hub, is_shipped, shipped_config


@dataclass(frozen=True)
class ModuleRoles:
    """A family's module names by role; each method picks the roles it adapts (LoRA: query and value)."""

    query: tuple[str, ...]  # attention projections
    key: tuple[str, ...]
    value: tuple[str, ...]
    output: tuple[str, ...]
    feed_forward: tuple[str, ...]  # T5 v1.0 has wi/wo, the gated Flan-T5 wi_0/wi_1/wo
    feed_forward_output: tuple[str, ...] = ()  # the feed-forward's output projection (IA3 scales its input)
    layer_norm: tuple[str, ...] = ()  # every layer norm (LayerNorm tuning; PEFT knows none for PEGASUS, LongT5)


@dataclass(frozen=True)
class TinyRecipe:
    """A family's offline tiny model: its configuration at toy size, and a tokenizer of the family's kind trained on
    the run's training text. The same text always gives the same tokenizer and weights (seeded init)."""

    architecture: dict[str, Any]  # the sizes
    layout: dict[str, Any]  # the rest of the configuration: activation, special-token ids, attention type
    tokenizer: str  # "unigram" (SentencePiece-style, as T5 and PEGASUS) or "byte-level-bpe" (as BART)
    special_tokens: tuple[str, ...]  # in id order from 0
    token_roles: dict[str, str]  # PreTrainedTokenizer keyword -> special token: {"pad_token": "<pad>", ...}
    own_lm_head: bool  # untie lm_head and scale it to unit-size initial logits (the T5 v1.1 layout)
    version: str  # part of the cache key: change it when the recipe changes


@dataclass(frozen=True)
class ModelFamily:
    model_type: str
    prefix: str  # input prefix the family was instruction-tuned with
    modules: ModuleRoles
    fp16_safe: bool  # False: activations overflow fp16 (T5: transformers #9295, #10956; PEGASUS: its model docs)
    dropout_keys: tuple[str, ...]  # config attributes holding the layers' dropout probabilities (model.dropout)
    tiny: TinyRecipe | None = None  # the offline `tiny-<model_type>` model
    # beam search may skip reordering the cross-attention cache (evaluate.py): only where tests/test_families.py
    # proves identical sequences and scores against stock generate
    skip_cross_attention_reorder: bool = False
    position_limit_key: str | None = None  # config key bounding the source length (learned/sinusoidal positions)


_T5 = ModuleRoles(query=("q",), key=("k",), value=("v",), output=("o",), feed_forward=("wi", "wi_0", "wi_1", "wo"),
                  feed_forward_output=("wo",), layer_norm=("layer_norm", "final_layer_norm"))
# BART's and PEGASUS's layer norms together (a name a model lacks matches nothing): PEGASUS ends each stack with
# layer_norm, BART normalises its embeddings (layernorm_embedding)
_BART = ModuleRoles(query=("q_proj",), key=("k_proj",), value=("v_proj",), output=("out_proj",),
                    feed_forward=("fc1", "fc2"), feed_forward_output=("fc2",),
                    layer_norm=("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm",
                                "layernorm_embedding", "layer_norm"))
_T5_DROPOUT = ("dropout_rate",)
_BART_DROPOUT = ("dropout", "attention_dropout", "activation_dropout")

# The tiny models: 2 + 2 layers, d_model 64, 4 heads, no dropout (on CPU the attention-dropout mask costs a third of
# a toy model's step). The T5 recipe is the original `tiny` model's, unchanged (same cache key, same weights).
TINY_ARCHITECTURE = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                         relative_attention_num_buckets=32, relative_attention_max_distance=128)
_T5_TOKENS = ("<pad>", "</s>", "<unk>")
_T5_ROLES = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
_T5_IDS = dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
_TINY_T5 = TinyRecipe(
    TINY_ARCHITECTURE, dict(feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False, **_T5_IDS),
    "unigram", _T5_TOKENS, _T5_ROLES, own_lm_head=True, version="v2")
# transient-global attention with long-t5-tglobal-base's radius and global block (at 16 and 8, a 4,096-token step
# took 2.5x as long on CPU)
_TINY_LONGT5 = TinyRecipe(
    {**TINY_ARCHITECTURE, "local_radius": 127, "global_block_size": 16},
    dict(encoder_attention_type="transient-global", feed_forward_proj="gated-gelu", dropout_rate=0.0,
         tie_word_embeddings=False, **_T5_IDS),
    "unigram", _T5_TOKENS, _T5_ROLES, own_lm_head=True, version="longt5-v1")
_BART_SIZES = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                   encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=1024)
_BART_NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
_TINY_BART = TinyRecipe(
    _BART_SIZES,
    dict(activation_function="gelu", bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
         forced_eos_token_id=2, **_BART_NO_DROPOUT),
    "byte-level-bpe", ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
    {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"},
    own_lm_head=False, version="bart-v1")
_TINY_PEGASUS = TinyRecipe(
    _BART_SIZES,
    dict(activation_function="relu", scale_embedding=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
         forced_eos_token_id=1, **_BART_NO_DROPOUT),
    "unigram", ("<pad>", "</s>", "<mask_1>", "<mask_2>", "<unk>"),
    {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask_2>"},
    own_lm_head=False, version="pegasus-v1")

FAMILIES: dict[str, ModelFamily] = {
    "t5": ModelFamily("t5", "summarize: ", _T5, fp16_safe=False, dropout_keys=_T5_DROPOUT, tiny=_TINY_T5,
                      skip_cross_attention_reorder=True),
    "longt5": ModelFamily("longt5", "summarize: ", _T5, fp16_safe=False, dropout_keys=_T5_DROPOUT, tiny=_TINY_LONGT5,
                          skip_cross_attention_reorder=True),
    "mt5": ModelFamily("mt5", "summarize: ", _T5, fp16_safe=False, dropout_keys=_T5_DROPOUT),
    "bart": ModelFamily("bart", "", _BART, fp16_safe=True, dropout_keys=_BART_DROPOUT, tiny=_TINY_BART,
                        skip_cross_attention_reorder=True, position_limit_key="max_position_embeddings"),
    "pegasus": ModelFamily("pegasus", "", _BART, fp16_safe=False, dropout_keys=_BART_DROPOUT, tiny=_TINY_PEGASUS,
                           skip_cross_attention_reorder=True, position_limit_key="max_position_embeddings"),
}

# model.name values of the tiny models: `tiny-<model_type>` for each family with a recipe; `tiny` is tiny-t5
TINY_MODELS: dict[str, str] = {"tiny": "t5", **{f"tiny-{t}": t for t, f in FAMILIES.items() if f.tiny is not None}}


def family_of(config: Any) -> ModelFamily:
    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILIES:
        raise MedsumError(f"model type {model_type!r} is not supported yet (known: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]


def is_tiny(name: str) -> bool:
    """True for the offline tiny models' names (`tiny`, `tiny-t5`, `tiny-bart`, ...)."""
    return name in TINY_MODELS


def cache_dir() -> Path:
    return Path(os.environ.get("MEDSUM_CACHE", Path.home() / ".cache" / "medsum"))


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_config(name: str):
    """The model's configuration: a local directory's, the hub's, or (offline) a shipped checkpoint's facts."""
    from transformers import AutoConfig

    quiet_transformers()
    if Path(name).is_dir():
        try:
            return AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise MedsumError(f"model.name: {name} has no readable config.json ({str(err).splitlines()[0]})") from None
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        if is_shipped(name):
            return shipped_config(name)
        raise MedsumError(
            f"model.name: {name!r} is neither a local directory nor reachable on the model hub "
            f"({str(err).splitlines()[0][:160]})"
        ) from None
    if is_shipped(name):
        check_against_hub(name, config)
    return config


def checkpoint_has_own_lm_head(model_dir: str | Path) -> bool:
    """True when the weights on disk carry an lm_head of their own (Flan-T5 layout), read from the file headers."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return "lm_head.weight" in json.loads(index.read_text()).get("weight_map", {})
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as handle:
            return "lm_head.weight" in handle.keys()
    return False


def untie_lm_head(model) -> None:
    """Gives the model an lm_head of its own, as in the released Flan-T5 checkpoints.

    transformers 5 forces ``tie_word_embeddings=True`` on every T5Config, so a model built from a config shares
    lm_head with the input embedding; setting the flag False unties encoder and decoder embeddings too (848,948,224
    parameters for flan-t5-large instead of 783,150,080). Only lm_head is untied here.
    """
    import torch

    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    if head is None or head.weight is not embedding.weight:
        return
    head.weight = torch.nn.Parameter(embedding.weight.detach().clone())
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        for key in [k for k in tied if k.endswith("lm_head.weight")]:
            tied.pop(key)


def build_from_config(config, device: str | None = None):
    """An untrained seq2seq model from a configuration (on ``device="meta"``: no memory, for counting)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    context = torch.device(device) if device else torch.device("cpu")
    with context:
        model = AutoModelForSeq2SeqLM.from_config(config)
    return model


def meta_model(name: str):
    """The model of ``name`` on the meta device, with the layout of its weights (untied lm_head where they have one)."""
    config = load_config(name)
    model = build_from_config(config, device="meta")
    if Path(name).is_dir():
        untied = checkpoint_has_own_lm_head(name)
    else:
        untied = is_shipped(name) and SHIPPED_CONFIGS[name].own_lm_head
    if untied:
        untie_lm_head(model)
    return model


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise MedsumError(f"model.name: cannot load a tokenizer from {source!r} ({str(err).splitlines()[0][:160]})") \
            from None


def load_pretrained(source: str, dropout: float | None = None):
    """The pretrained seq2seq model (weights included) from a local directory or the hub; ``dropout`` (when not
    None) replaces every dropout probability of its layers (the family's ``dropout_keys``)."""
    from transformers import AutoModelForSeq2SeqLM

    quiet_transformers()
    try:
        if dropout is None:
            return AutoModelForSeq2SeqLM.from_pretrained(source)
        config = load_config(source)
        for key in family_of(config).dropout_keys:
            setattr(config, key, dropout)
        return AutoModelForSeq2SeqLM.from_pretrained(source, config=config)
    except (OSError, ValueError) as err:
        hint = ""
        if is_shipped(source):
            hint = " (its architecture is known offline, enough for `medsum params`, but training needs the weights)"
        raise MedsumError(
            f"model.name: cannot load weights of {source!r}{hint}: {str(err).splitlines()[0][:160]}"
        ) from None


# ---------------------------------------------------------------------------------------------- accounting


def count_parameters(model) -> dict[str, int]:
    """Unique parameters (tied tensors once): trainable and total."""
    seen: set[int] = set()
    total = trainable = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return {"total": total, "trainable": trainable}


def parameter_report(base_params: int, model) -> dict[str, Any]:
    """The figures every run records: base, trainable, total (= base + what the method adds), trainable %."""
    counts = count_parameters(model)
    total = counts["total"]
    return {
        "base": base_params,
        "total": total,
        "trainable": counts["trainable"],
        "added": total - base_params,
        "trainable_pct": 100.0 * counts["trainable"] / total if total else 0.0,
    }
