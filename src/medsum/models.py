"""Models: the model-family table, loading (hub id, local directory, the offline `tiny` model), and
parameter accounting.

Everything family-specific (input prefix, module names by role, fp16 safety) lives in ``FAMILIES``; the rest of
medsum asks this table instead of assuming T5.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.errors import MedsumError


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
class ModelFamily:
    model_type: str
    prefix: str  # input prefix the family was instruction-tuned with
    modules: ModuleRoles
    fp16_safe: bool  # False: activations overflow fp16 (T5: transformers #9295, #10956)
    dropout_keys: tuple[str, ...]  # config attributes holding the layers' dropout probabilities (model.dropout)


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
FAMILIES: dict[str, ModelFamily] = {
    "t5": ModelFamily("t5", "summarize: ", _T5, fp16_safe=False, dropout_keys=_T5_DROPOUT),
    "longt5": ModelFamily("longt5", "summarize: ", _T5, fp16_safe=False, dropout_keys=_T5_DROPOUT),
    "mt5": ModelFamily("mt5", "summarize: ", _T5, fp16_safe=False, dropout_keys=_T5_DROPOUT),
    "bart": ModelFamily("bart", "", _BART, fp16_safe=True, dropout_keys=_BART_DROPOUT),
    "pegasus": ModelFamily("pegasus", "", _BART, fp16_safe=True, dropout_keys=_BART_DROPOUT),
}


def family_of(config: Any) -> ModelFamily:
    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILIES:
        raise MedsumError(f"model type {model_type!r} is not supported yet (known: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]


# The released Flan-T5 checkpoints' configurations (huggingface.co/google/flan-t5-*/config.json), so that their
# architecture (and parameter count) is known offline. All: vocabulary 32,128, gated-gelu, untied lm_head.
_FLAN_T5_SHARED = dict(
    vocab_size=32128, feed_forward_proj="gated-gelu", d_kv=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6, decoder_start_token_id=0,
    eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
)
FLAN_T5_CONFIGS: dict[str, dict[str, int]] = {
    "google/flan-t5-small": dict(d_model=512, d_ff=1024, num_heads=6, num_layers=8, num_decoder_layers=8),
    "google/flan-t5-base": dict(d_model=768, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12),
    "google/flan-t5-large": dict(d_model=1024, d_ff=2816, num_heads=16, num_layers=24, num_decoder_layers=24),
    "google/flan-t5-xl": dict(d_model=2048, d_ff=5120, num_heads=32, num_layers=24, num_decoder_layers=24),
    "google/flan-t5-xxl": dict(d_model=4096, d_ff=10240, num_heads=64, num_layers=24, num_decoder_layers=24),
}

# The offline `tiny` model: the Flan-T5 layout (gated-gelu, relative attention, untied lm_head) at toy size.
TINY_ARCHITECTURE = dict(d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                         relative_attention_num_buckets=32, relative_attention_max_distance=128)
TINY_VOCAB_SIZE = 4000
TINY_TOKENIZER_MAX_EXAMPLES = 200  # the tokenizer trains on at most this many training examples (a few seconds)
TINY_INIT_SEED = 0  # the tiny "pretrained" base is the same for every run seed, as a real checkpoint would be


def cache_dir() -> Path:
    return Path(os.environ.get("MEDSUM_CACHE", Path.home() / ".cache" / "medsum"))


def is_known_flan_t5(name: str) -> bool:
    return name in FLAN_T5_CONFIGS


def flan_t5_config(name: str):
    from transformers import T5Config

    return T5Config(**_FLAN_T5_SHARED, **FLAN_T5_CONFIGS[name])


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_config(name: str):
    """The model's configuration: a local directory's, the hub's, or (offline) the shipped Flan-T5 facts."""
    from transformers import AutoConfig

    _quiet_transformers()
    if Path(name).is_dir():
        try:
            return AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise MedsumError(f"model.name: {name} has no readable config.json ({str(err).splitlines()[0]})") from None
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        if is_known_flan_t5(name):
            return flan_t5_config(name)
        raise MedsumError(
            f"model.name: {name!r} is neither a local directory nor reachable on the model hub "
            f"({str(err).splitlines()[0][:160]})"
        ) from None
    if is_known_flan_t5(name):
        _check_against_shipped_facts(name, config)
    return config


def _check_against_shipped_facts(name: str, hub_config) -> None:
    shipped = {**_FLAN_T5_SHARED, **FLAN_T5_CONFIGS[name]}
    shipped.pop("tie_word_embeddings")
    differ = {k: (v, getattr(hub_config, k, None)) for k, v in shipped.items() if getattr(hub_config, k, None) != v}
    if differ:
        raise MedsumError(f"model.name: the hub config of {name} disagrees with medsum's table: {differ}")


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
    untied = is_known_flan_t5(name) if not Path(name).is_dir() else checkpoint_has_own_lm_head(name)
    if untied:
        untie_lm_head(model)
    return model


# ---------------------------------------------------------------------------------------------- tiny model


def _fingerprint(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    digest.update(json.dumps([TINY_ARCHITECTURE, TINY_VOCAB_SIZE, TINY_INIT_SEED, "v2"]).encode())
    return digest.hexdigest()[:16]


def train_tiny_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB_SIZE):
    """A SentencePiece-style unigram tokenizer (T5's special ids: pad 0, eos 1, unk 2) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                              special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_model_dir(train_texts: list[str]) -> Path:
    """A local model directory holding the tiny model and its tokenizer, built once per training text and cached.

    The cache key is the training text, so every run and seed of a study shares one tokenizer and one base model.
    """
    import torch
    from transformers import T5Config

    _quiet_transformers()
    texts = train_texts[: 2 * TINY_TOKENIZER_MAX_EXAMPLES]
    target = cache_dir() / "tiny" / _fingerprint(texts)
    if (target / "config.json").is_file():
        return target
    # concurrent builders (DDP ranks, Ray tasks) race harmlessly: the first one finished is kept
    with rundir.atomic_dir(target, replace=False) as staging:
        tokenizer = train_tiny_tokenizer(texts)
        # no dropout: on CPU the attention-dropout mask costs a third of a toy model's step
        config = T5Config(vocab_size=len(tokenizer), feed_forward_proj="gated-gelu", dropout_rate=0.0,
                          decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
                          **TINY_ARCHITECTURE)
        fork = torch.random.fork_rng()
        with fork:
            torch.manual_seed(TINY_INIT_SEED)
            model = build_from_config(config)
            untie_lm_head(model)
            with torch.no_grad():  # T5 v1.1 does not rescale decoder outputs: keep the initial logits near unit scale
                model.get_output_embeddings().weight.mul_(TINY_ARCHITECTURE["d_model"] ** -0.5)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def resolve_model_source(name: str, train: Sequence[Any]) -> str:
    """Where the weights come from: the tiny cache directory, a local directory, or a hub id. ``train``: the
    training examples; the tiny model's tokenizer trains on the source and target of the first
    ``TINY_TOKENIZER_MAX_EXAMPLES`` of them (a bounded sample, whatever the size of the split)."""
    if name == "tiny":
        sample = train[:TINY_TOKENIZER_MAX_EXAMPLES]
        return str(tiny_model_dir([text for example in sample for text in (example.source, example.target)]))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if not Path(name).is_dir():
        if name.startswith(("/", ".", "~")) or Path(name).exists():
            raise MedsumError(f"model.name: no such local model directory: {name}")
        load_config(name)  # a clear error now if the hub id is unknown or unreachable
    return name


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise MedsumError(f"model.name: cannot load a tokenizer from {source!r} ({str(err).splitlines()[0][:160]})") \
            from None


def load_pretrained(source: str, dropout: float | None = None):
    """The pretrained seq2seq model (weights included) from a local directory or the hub; ``dropout`` (when not
    None) replaces every dropout probability of its layers (the family's ``dropout_keys``)."""
    from transformers import AutoModelForSeq2SeqLM

    _quiet_transformers()
    try:
        if dropout is None:
            return AutoModelForSeq2SeqLM.from_pretrained(source)
        config = load_config(source)
        for key in family_of(config).dropout_keys:
            setattr(config, key, dropout)
        return AutoModelForSeq2SeqLM.from_pretrained(source, config=config)
    except (OSError, ValueError) as err:
        hint = ""
        if is_known_flan_t5(source):
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
