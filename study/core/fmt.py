"""How a value is printed: the one number rule of the study's progress lines (study.search.progress), its Pareto
table (study.search.driver), the result pipeline's baseline lines (benchmarks.collect), the report's cells
(reports.html), the model card (study.measure.export) and the reproduce log (study.reproduce.rerun).

It lives in the first stage so that every later one can use it without importing another (study.search.progress
imports Ray)."""

from __future__ import annotations

import html as _html
import math
import numbers
from typing import Any

import numpy as np


def fmt_value(v: Any, spec: str | None = None, *, html: bool = False) -> str:
    """A value as printed: "-" for none; booleans as True / False; integers, and integral floats from 1,000 up,
    with thousands separators; other floats to 4 significant digits (nan and inf as such); anything else as str().

    spec: a format spec (".2f", "+.2f", ",") applied as format(v, spec) instead of that rule, "-" for none.
    html: the report's table cells and hover text: "" for none, NaN and pd.NA, every text HTML-escaped."""
    if html and _missing(v):
        return ""
    if v is None:
        return "-"
    if spec is not None:
        return format(v, spec)
    text = _number_text(v)
    if text is None:
        text = str(v)
    return _html.escape(text) if html else text


def _missing(v: Any) -> bool:
    """None, a NaN float or pandas' NA (checked by its type name, so that this module needs no pandas)."""
    if v is None or type(v).__name__ == "NAType":
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isnan(float(v))


def _number_text(v: Any) -> str | None:
    """The number rule of `fmt_value` (numpy numbers like Python's); None for a value that is no number."""
    if isinstance(v, (bool, np.bool_)):  # before Integral: True is an int
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return f"{int(v):,}"
    if isinstance(v, numbers.Real):
        x = float(v)
        if not math.isfinite(x):
            return str(x)
        if x.is_integer() and abs(x) >= 1000:
            return f"{int(x):,}"
        return f"{x:.4g}"
    return None
