"""Numbers as people read them, the same in the console, the sweep's note and its HTML report:
:func:`figure`. Full precision stays where programs read (``--json``, MLflow's metrics)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["figure", "param_text"]


def figure(value: float | None) -> str:
    """``value`` as people read it: 4 significant digits, trailing zeros kept (``0.5972``,
    ``0.5000``, ``12.50``, ``0.0001235``, ``1.235e+06``, ``1e-07``); a whole number whole (``3``, ``120``,
    a step ``1234567``); ``-`` for none. Full precision stays in ``--json``."""
    if value is None:
        return "-"
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    mantissa, e, exponent = f"{number:#.4g}".partition("e")
    return (mantissa.rstrip("0") if e else mantissa).rstrip(".") + e + exponent


def param_text(value: Any) -> str:
    """A parameter as logged (MLflow keeps text), a longer fraction to 4 significant digits
    (``0.0003183946`` as ``0.0003184``; ``0.1`` and ``1e-05`` as they are; ``--json`` keeps all)."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() or not math.isfinite(number):
        return text
    rounded = figure(number)
    return rounded if len(rounded) < len(text) else text
