"""The adaptation methods, by name. Each is one module exposing a ``METHOD``; adding IA3 or DoRA is one new
module plus one line here."""

from __future__ import annotations

from medsum.methods import full, lora, prompt_tuning
from medsum.methods.base import Method, ModelContext

METHODS: dict[str, Method] = {m.name: m for m in (lora.METHOD, prompt_tuning.METHOD, full.METHOD)}

__all__ = ["METHODS", "Method", "ModelContext", "get_method"]


def get_method(name: str) -> Method:
    return METHODS[name]
