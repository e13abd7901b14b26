"""The adaptation methods, by name. Each is one module exposing a ``METHOD`` (see ``base.Method``); adding a method
is one new module plus one line here."""

from __future__ import annotations

from medsum.methods import (
    adalora,
    boft,
    fourierft,
    full,
    hra,
    ia3,
    ln_tuning,
    loha,
    lokr,
    lora,
    oft,
    prefix_tuning,
    prompt_tuning,
    vera,
)
from medsum.methods.base import Method, ModelContext

METHODS: dict[str, Method] = {m.name: m for m in (
    lora.METHOD,
    prompt_tuning.METHOD,
    full.METHOD,
    ia3.METHOD,
    prefix_tuning.METHOD,
    adalora.METHOD,
    vera.METHOD,
    loha.METHOD,
    lokr.METHOD,
    oft.METHOD,
    boft.METHOD,
    hra.METHOD,
    fourierft.METHOD,
    ln_tuning.METHOD,
)}
DEFAULT_METHOD = "lora"
# the model families tests/test_matrix.py trains every method on (`medsum methods` shows them)
TESTED_FAMILIES = ("t5", "bart", "pegasus", "longt5")

__all__ = ["DEFAULT_METHOD", "METHODS", "TESTED_FAMILIES", "Method", "ModelContext"]
