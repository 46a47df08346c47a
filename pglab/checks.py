"""The one small set of input checks, shared by the core and the experiment configs.

Each check returns the value in its canonical type or raises :class:`ConfigError` (a
``ValueError``) whose message names the field, the value and what is allowed, on one line:

    >>> positive_int("n_trajectories", 0)
    Traceback (most recent call last):
    ...
    pglab.checks.ConfigError: n_trajectories must be a positive integer, got 0

Bools are rejected where numbers are expected (``True`` is an ``int`` in Python, never a
batch size). Integral floats are rejected where integers are expected (``seed=1.7`` must
not silently run seed 1; ``seed=2.0`` is refused too, so a config always records exactly
what ran). Standard library only.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

#: Largest finite float32: parameters are float32 on the gymnasium side, so a step size
#: (or any scale applied to them) above it overflows on the first update.
FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """A value that cannot be used; the message names the field, the value and the rule."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(field: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]`` (either end optional)."""
    if not _is_int(value):
        raise ConfigError(f"{field} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{field} must be an integer <= {maximum}, got {value!r}")
    return value


def positive_int(field: str, value: Any) -> int:
    """``value`` as an ``int`` >= 1."""
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    return int(value)


def seed(field: str, value: Any) -> int:
    """A seed: an ``int`` in ``[0, 2**63)`` (what ``torch.Generator.manual_seed`` takes)."""
    return integer(field, value, minimum=0, maximum=2**63 - 1)


def real(
    field: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` in the interval from ``low`` to ``high``.

    The ends are closed unless ``low_open`` / ``high_open``; the message prints the
    interval in the usual notation, e.g. ``(0, 1]``.
    """
    if not _is_real(value):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if not math.isfinite(number) or too_low or too_high:
        if math.isinf(low) and math.isinf(high):
            rule = "finite"
        elif math.isinf(high):
            rule = f"finite and {'>' if low_open else '>='} {low:g}"
        elif math.isinf(low):
            rule = f"finite and {'<' if high_open else '<='} {high:g}"
        else:
            left = "(" if low_open or math.isinf(low) else "["
            right = ")" if high_open or math.isinf(high) else "]"
            rule = f"finite and in {left}{low:g}, {high:g}{right}"
        raise ConfigError(f"{field} must be {rule}, got {value!r}")
    return number


def positive_real(field: str, value: Any, maximum: float = math.inf) -> float:
    """A finite ``float`` > 0 (and <= ``maximum``)."""
    return real(field, value, 0.0, maximum, low_open=True)


def probability(field: str, value: Any, *, open_low: bool = False) -> float:
    """A ``float`` in ``[0, 1]`` (``(0, 1]`` with ``open_low``)."""
    return real(field, value, 0.0, 1.0, low_open=open_low)


def discount(field: str, value: Any) -> float:
    """A discount factor gamma in ``[0, 1]``."""
    return real(field, value, 0.0, 1.0)


def boolean(field: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (``1`` or ``"yes"`` is not a switch)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be true or false, got {value!r}")
    return value


def instance(field: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    """``value`` if it is an instance of ``kind``; else an error naming the value and its type."""
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        wanted = " or ".join(k.__name__ for k in kinds)
        shown = repr(value)
        if len(shown) > 60 or "\n" in shown:
            shown = shown.replace("\n", " ")[:57] + "..."
        raise ConfigError(f"{field} must be a {wanted}, got {shown} ({type(value).__name__})")
    return value


def one_of(field: str, value: Any, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``; else an error with a did-you-mean."""
    if isinstance(value, str) and value in options:
        return value
    hint = did_you_mean(str(value), options)
    raise ConfigError(
        f"unknown {field} {value!r}{hint}; choose one of: {', '.join(map(str, options))}"
    )


def non_empty(field: str, values: Iterable[Any]) -> list[Any]:
    """``values`` as a list; an error when it is empty."""
    items = list(values)
    if not items:
        raise ConfigError(f"{field} must list at least one value, got []")
    return items


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
