"""Argument checks shared across the package: each returns the value or raises
:class:`~papa_bayes.exceptions.InputDataError` naming the field, what was expected
and what came."""

from __future__ import annotations

import math
import numbers
from typing import Any

from papa_bayes.exceptions import InputDataError

__all__ = ["check_float", "check_int"]


def _shown(value: Any) -> Any:
    """``value`` as an error shows it: a str quoted, so that "3" does not read as 3."""
    return repr(value) if isinstance(value, str) else value


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an int, or InputDataError unless an integer >= ``minimum`` (NumPy integers too; no bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputDataError(name, f"an integer >= {minimum}", _shown(value))
    return int(value)


def check_float(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False,
                maximum: float | None = None, inclusive_maximum: bool = False) -> float:
    """``value`` as a finite float in the given range, or InputDataError (also for a bool or str).

    The range is ``> minimum`` (``strict``) or ``>= minimum``, and, with ``maximum``,
    ``< maximum`` or (``inclusive_maximum``) ``<= maximum``.
    """
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    upper = "" if maximum is None else f" and {'<=' if inclusive_maximum else '<'} {maximum:g}"
    expected = f"a finite number {bound}{upper}"
    if isinstance(value, (bool, str, bytes)):  # text is not a number, even when float() parses it
        raise InputDataError(name, expected, _shown(value))
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputDataError(name, expected, value) from None
    above = maximum is not None and (x > maximum if inclusive_maximum else x >= maximum)
    if not math.isfinite(x) or x < minimum or (strict and x == minimum) or above:
        raise InputDataError(name, expected, value)
    return x
