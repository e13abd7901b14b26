"""Cell formats shared by the report's tables (``report.tables``, ``report.beyond``)."""

from __future__ import annotations

import math
import statistics

from medsum.report.stats import t_interval

ALPHA = 0.05  # a difference is called significant when its Holm-corrected p-value is below this


def mean_pm_sd(values: list[float]) -> str:
    """``43.52 ± 0.18``; a single seed has no sd (``43.52 ± –``); no value at all is ``–``."""
    if not values:
        return "–"
    if len(values) < 2:
        return f"{values[0]:.2f} ± –"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def interval(values: list[float]) -> str:
    low, high = t_interval(values)
    return "–" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
