"""The adaptation methods, by name. Each is one module exposing a ``METHOD`` (see ``base.Method``); adding IA3 or
DoRA is one new module plus one line here."""

from __future__ import annotations

from medsum.methods import full, lora, prompt_tuning
from medsum.methods.base import Method, ModelContext

METHODS: dict[str, Method] = {m.name: m for m in (lora.METHOD, prompt_tuning.METHOD, full.METHOD)}
DEFAULT_METHOD = "lora"

__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "ModelContext"]
