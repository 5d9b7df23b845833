"""Perturbation budgets as they are written: a number (0.5) or a fraction of 255 (8/255)."""
from __future__ import annotations

import math
from fractions import Fraction

from filterdb.errors import FilterDBError


def parse_eps(value: str | float | int) -> float:
    """A perturbation budget from a number or a fraction string such as ``"8/255"``."""
    if isinstance(value, (int, float)):
        eps = float(value)
    else:
        text = str(value).strip()
        try:
            eps = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise FilterDBError(f"invalid eps {value!r}: give a number such as 0.03 or a fraction such as 8/255") from None
    if not math.isfinite(eps) or eps < 0:
        raise FilterDBError(f"invalid eps {value!r}: it must be a finite number >= 0")
    return eps


def format_eps(eps: float) -> str:
    """``8/255`` for multiples of 1/255, else the plain number: the way budgets are usually written."""
    num = eps * 255
    if eps > 0 and abs(num - round(num)) < 1e-6 and round(num) < 255:
        return f"{round(num)}/255"
    return f"{eps:g}"
