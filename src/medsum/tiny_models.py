"""Where a run's weights come from: a hub id, a local directory, or an offline tiny model.

A tiny model (`tiny-t5`, `tiny-bart`, `tiny-pegasus`, `tiny-longt5`; `tiny` is `tiny-t5`) is built from its family's
``TinyRecipe`` (models.py): a tokenizer of the family's kind trained on the run's training text, and randomly
initialised weights from a fixed seed. It is built once per (recipe, text) and cached, so every run and seed of a
study shares one tokenizer and one base model, as they would share a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsum import rundir
from medsum.errors import MedsumError
from medsum.models import (
    FAMILIES,
    TINY_MODELS,
    TinyRecipe,
    build_from_config,
    cache_dir,
    is_tiny,
    load_config,
    quiet_transformers,
    untie_lm_head,
)

TINY_VOCAB_SIZE = 4000
TINY_TOKENIZER_MAX_EXAMPLES = 200  # the tokenizer trains on at most this many training examples (a few seconds)
TINY_INIT_SEED = 0  # the tiny "pretrained" base is the same for every run seed, as a real checkpoint would be


def _fingerprint(texts: list[str], recipe: TinyRecipe) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    digest.update(json.dumps([recipe.architecture, TINY_VOCAB_SIZE, TINY_INIT_SEED, recipe.version]).encode())
    return digest.hexdigest()[:16]


def _unigram(texts: list[str], recipe: TinyRecipe, vocab_size: int):
    """A SentencePiece-style unigram tokenizer (Metaspace pre-tokenizer) that appends eos, as T5's and PEGASUS's do."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    unk = recipe.token_roles["unk_token"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(recipe.special_tokens),
                                      unk_token=unk, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    eos = recipe.token_roles["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, recipe.special_tokens.index(eos))])
    return tokenizer


def _byte_level_bpe(texts: list[str], recipe: TinyRecipe, vocab_size: int):
    """A byte-level BPE tokenizer that wraps texts in bos ... eos, as BART's (RoBERTa's) does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(recipe.special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    bos, eos = recipe.token_roles["bos_token"], recipe.token_roles["eos_token"]
    tokenizer.post_processor = processors.RobertaProcessing(
        (eos, recipe.special_tokens.index(eos)), (bos, recipe.special_tokens.index(bos)), trim_offsets=False,
        add_prefix_space=False)
    return tokenizer


_TOKENIZER_KINDS = {"unigram": _unigram, "byte-level-bpe": _byte_level_bpe}


def train_tokenizer(texts: list[str], recipe: TinyRecipe, vocab_size: int = TINY_VOCAB_SIZE):
    """A tokenizer of the recipe's kind, with its special tokens at their ids, trained on ``texts``."""
    from transformers import PreTrainedTokenizerFast

    backend = _TOKENIZER_KINDS[recipe.tokenizer](texts, recipe, vocab_size)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **recipe.token_roles)


def build_tiny_model(recipe: TinyRecipe, model_type: str, vocab_size: int):
    """The recipe's model with seeded random weights (the same every time, whatever the global RNG state)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **recipe.layout, **recipe.architecture)
    with torch.random.fork_rng():
        torch.manual_seed(TINY_INIT_SEED)
        model = build_from_config(config)
        if recipe.own_lm_head:
            untie_lm_head(model)
            with torch.no_grad():  # T5 v1.1 does not rescale decoder outputs: keep the initial logits near unit scale
                model.get_output_embeddings().weight.mul_(config.d_model ** -0.5)
    return model


def tiny_model_dir(train_texts: list[str], model_type: str = TINY_MODELS["tiny"]) -> Path:
    """A local model directory holding the family's tiny model and its tokenizer, built once per training text and
    cached. The cache key is the training text and the recipe, so every run and seed of a study shares one."""
    quiet_transformers()
    recipe = FAMILIES[model_type].tiny
    texts = train_texts[: 2 * TINY_TOKENIZER_MAX_EXAMPLES]
    target = cache_dir() / "tiny" / _fingerprint(texts, recipe)
    if (target / "config.json").is_file():
        return target
    # concurrent builders (DDP ranks, Ray tasks) race harmlessly: the first one finished is kept
    with rundir.atomic_dir(target, replace=False) as staging:
        tokenizer = train_tokenizer(texts, recipe)
        build_tiny_model(recipe, model_type, len(tokenizer)).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def resolve_model_source(name: str, train: Sequence[Any]) -> str:
    """Where the weights come from: a tiny model's cache directory, a local directory, or a hub id. ``train``: the
    training examples; a tiny model's tokenizer trains on the source and target of the first
    ``TINY_TOKENIZER_MAX_EXAMPLES`` of them (a bounded sample, whatever the size of the split)."""
    if is_tiny(name):
        sample = train[:TINY_TOKENIZER_MAX_EXAMPLES]
        texts = [text for example in sample for text in (example.source, example.target)]
        return str(tiny_model_dir(texts, TINY_MODELS[name]))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", ".", "~")) or Path(name).exists():
        raise MedsumError(f"model.name: no such local model directory: {name}")
    load_config(name)  # a clear error now if the hub id is unknown or unreachable
    return name
