"""The method catalogue that ``medsum methods`` prints: every registered method, what trains, its settings with
their defaults, its default learning rate and the families the test matrix trains it on."""

from __future__ import annotations

import dataclasses

import yaml

from medsum.methods import METHODS, TESTED_FAMILIES
from medsum.settings import default_of

COLUMNS = ("method", "label", "what trains", "settings (default)", "default learning rate", "families tested")


def _setting_text(field: dataclasses.Field) -> str:
    default = yaml.safe_dump(default_of(field), default_flow_style=True).strip().removesuffix("...").strip()
    return f"{field.name}={default}"


def catalog_rows() -> list[tuple[str, ...]]:
    rows = []
    for name, method in METHODS.items():
        settings = [_setting_text(f) for f in dataclasses.fields(method.config_class) if f.name != "name"]
        rows.append((name, method.label, method.trains, ", ".join(settings) or "-", method.learning_rate_help,
                     ", ".join(TESTED_FAMILIES)))
    return rows


def markdown_table() -> str:
    """The README's methods table (a test keeps the README equal to this)."""
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in catalog_rows():
        cells = [f"`{row[0]}`", *row[1:3], f"`{row[3]}`" if row[3] != "-" else "-", *row[4:]]
        rows.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(rows)
