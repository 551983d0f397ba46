"""How a study prints a value, in its progress lines (study.search.progress) and its Pareto table
(study.search.driver): one rule for both, so that neither imports the other (study.search.progress imports Ray)."""

from __future__ import annotations

from typing import Any


def fmt_value(v: Any) -> str:
    """A value as printed: "-" for none, integers and integral floats from 1,000 up with thousands separators,
    other floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
