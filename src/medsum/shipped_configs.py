"""Part of the model-family table: the configurations of released checkpoints, shipped so that their architecture
(and parameter count) is known offline. Only the keys that shape the weights are kept; where the hub is reachable,
its configuration is used and must agree with these facts (``check_against_hub``).

Each entry names where its facts were read. ``own_lm_head``: the weights carry an lm_head of their own (untied from
the input embedding), as the T5 v1.1 layouts do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medsum.errors import MedsumError


@dataclass(frozen=True)
class ShippedConfig:
    model_type: str
    facts: dict[str, Any]
    own_lm_head: bool
    source: str  # where the facts were read
    ignored: tuple[str, ...] = field(default=())  # facts a reachable hub config need not repeat


# Flan-T5 (huggingface.co/google/flan-t5-*/config.json): vocabulary 32,128, gated-gelu, untied lm_head.
_FLAN_T5 = dict(
    vocab_size=32128, feed_forward_proj="gated-gelu", d_kv=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6, decoder_start_token_id=0,
    eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
)
_FLAN_T5_SOURCE = "huggingface.co/google/flan-t5-*/config.json"
_FLAN_T5_SIZES = {
    "small": dict(d_model=512, d_ff=1024, num_heads=6, num_layers=8, num_decoder_layers=8),
    "base": dict(d_model=768, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12),
    "large": dict(d_model=1024, d_ff=2816, num_heads=16, num_layers=24, num_decoder_layers=24),
    "xl": dict(d_model=2048, d_ff=5120, num_heads=32, num_layers=24, num_decoder_layers=24),
    "xxl": dict(d_model=4096, d_ff=10240, num_heads=64, num_layers=24, num_decoder_layers=24),
}

# BART and PEGASUS share BART's configuration keys. Their lm_head is tied to the shared embedding.
_BART_LARGE = dict(
    vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
    decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
    activation_function="gelu", scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    decoder_start_token_id=2, forced_eos_token_id=2,
)
_PEGASUS_PUBMED = dict(
    vocab_size=96103, d_model=1024, encoder_layers=16, decoder_layers=16, encoder_attention_heads=16,
    decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
    activation_function="relu", scale_embedding=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    forced_eos_token_id=1,
)
_BIOBART_V2_BASE = dict(
    vocab_size=85401, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
    decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
    activation_function="gelu", scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    decoder_start_token_id=2, forced_eos_token_id=2,
)
# LongT5 with transient-global attention: the T5 v1.1 layout (gated-gelu, untied lm_head).
_LONG_T5_TGLOBAL_BASE = dict(
    vocab_size=32128, d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
    feed_forward_proj="gated-gelu", encoder_attention_type="transient-global", local_radius=127,
    global_block_size=16, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
)
# SciFive: T5 v1.0 base continued on PubMed + PMC (relu feed-forward, lm_head tied to the shared embedding).
_SCIFIVE_BASE = dict(
    vocab_size=32128, d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12,
    feed_forward_proj="relu", relative_attention_num_buckets=32, layer_norm_epsilon=1e-6,
    decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
)

SHIPPED_CONFIGS: dict[str, ShippedConfig] = {
    **{f"google/flan-t5-{size}": ShippedConfig("t5", {**_FLAN_T5, **sizes}, True, _FLAN_T5_SOURCE)
       for size, sizes in _FLAN_T5_SIZES.items()},
    "facebook/bart-large": ShippedConfig(
        "bart", _BART_LARGE, False,
        "the config.json of fine-tuned copies naming facebook/bart-large as _name_or_path (e.g. "
        "huggingface.co/research-backup/bart-large-squad-qg-default), whose architecture keys are inherited; "
        "vocabulary 50,265 as in transformers' BartConfig, which describes bart-large"),
    "google/pegasus-pubmed": ShippedConfig(
        "pegasus", _PEGASUS_PUBMED, False,
        "the config.json of fine-tuned copies naming google/pegasus-pubmed as _name_or_path "
        "(huggingface.co/hisaoka/pegasus-pubmed_radiology-ai-cardiothoracic-0.9, Harsit/scientific-paper-summarizer)"),
    "google/long-t5-tglobal-base": ShippedConfig(
        "longt5", _LONG_T5_TGLOBAL_BASE, True,
        "huggingface.co/google/long-t5-tglobal-base/blob/452ea23/config.json plus its commit cff30bf 'Fix untie "
        "word embeddings' (tie_word_embeddings: false; the weights file grew by the 32,128 x 768 lm_head)"),
    "GanjinZero/biobart-v2-base": ShippedConfig(
        "bart", _BIOBART_V2_BASE, False,
        "the config.json of fine-tuned copies naming GanjinZero/biobart-v2-base as _name_or_path "
        "(huggingface.co/ireneli1024/biobart-v2-base-plos-finetuned; vocabulary 85,401 from "
        "huggingface.co/onionLad/medlid-define commit 84815ca)"),
    "razent/SciFive-base-Pubmed_PMC": ShippedConfig(
        "t5", _SCIFIVE_BASE, False,
        "huggingface.co/razent/SciFive-base-Pubmed/config.json (581 bytes, as SciFive-base-Pubmed_PMC's) and "
        "fine-tuned copies naming razent/SciFive-base-Pubmed_PMC (huggingface.co/vsamuel/scifive_five_epoch); "
        "its 892 MB weights file holds one embedding (tied lm_head)"),
}


def is_shipped(name: str) -> bool:
    return name in SHIPPED_CONFIGS


def shipped_config(name: str):
    """The transformers configuration of a shipped checkpoint, built from its facts (offline)."""
    from transformers import AutoConfig

    shipped = SHIPPED_CONFIGS[name]
    return AutoConfig.for_model(shipped.model_type, **shipped.facts)


def check_against_hub(name: str, hub_config) -> None:
    """A reachable hub configuration must agree with the shipped facts (else the offline counts would be wrong)."""
    shipped = SHIPPED_CONFIGS[name]
    facts = {k: v for k, v in shipped.facts.items() if k != "tie_word_embeddings" and k not in shipped.ignored}
    differ = {k: (v, getattr(hub_config, k, None)) for k, v in facts.items() if getattr(hub_config, k, None) != v}
    if differ:
        raise MedsumError(f"model.name: the hub config of {name} disagrees with medsum's table: {differ}")
