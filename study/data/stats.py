"""The `normalize` setting as the config stores it: a name (auto, dataset, imagenet, none) or explicit per-channel
means / stds written "m1,m2,m3/s1,s2,s3"; one-sentence UserErrors for anything else."""

from __future__ import annotations

import math
import numbers
from typing import Any

from study.core.errors import UserError
from study.data.datasets import NORMALIZE_NAMES


def _floats(values: Any, what: str, source: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise UserError(f"{source}: 'normalize' {what} must be numbers (got {v!r}); write normalize: "
                            "{mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}.")
        out.append(float(v))
    if not out:
        raise UserError(f"{source}: 'normalize' {what} is empty; give one value per image channel.")
    return tuple(out)


def format_explicit(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """The config's text for explicit statistics: "m1,m2,m3/s1,s2,s3"."""
    return ",".join(f"{v:.10g}" for v in mean) + "/" + ",".join(f"{v:.10g}" for v in std)


def canonical(value: Any, source: str = "config") -> str:
    """The normalize value as the config stores it (a name or "means/stds"); UserError, one sentence, if bad."""
    hint = ("use auto, dataset, imagenet, none, or the teacher's statistics as {mean: [m1, m2, m3], "
            "std: [s1, s2, s3]} (0-1 scale)")
    if isinstance(value, dict):
        if set(value) != {"mean", "std"}:
            raise UserError(f"{source}: 'normalize' as a mapping needs exactly the keys mean and std (got "
                            f"{sorted(map(str, value))}); {hint}.")
        mean, std = _floats(value["mean"], "mean", source), _floats(value["std"], "std", source)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (list, tuple)) for v in value):
        mean, std = _floats(value[0], "mean", source), _floats(value[1], "std", source)
    elif isinstance(value, str) and value.strip().lower() in NORMALIZE_NAMES:
        return value.strip().lower()
    elif isinstance(value, str) and value.count("/") == 1:
        try:
            mean, std = (tuple(float(v) for v in part.strip(" []()").split(",")) for part in value.split("/"))
        except ValueError:
            raise UserError(f"{source}: 'normalize' {value!r} is not 'm1,m2,m3/s1,s2,s3'; {hint}.") from None
    else:
        raise UserError(f"{source}: 'normalize' {value!r} is not a normalisation; {hint}.")
    if len(mean) != len(std):
        raise UserError(f"{source}: 'normalize' has {len(mean)} mean value(s) but {len(std)} std value(s); give "
                        "one of each per image channel.")
    if any(s <= 0 or not math.isfinite(s) for s in std) or not all(math.isfinite(m) for m in mean):
        raise UserError(f"{source}: 'normalize' std values must be > 0 (got {list(std)}); {hint}.")
    return format_explicit(mean, std)
