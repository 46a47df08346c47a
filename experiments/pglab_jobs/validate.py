"""Config checks shared by the experiment apps: fail before any work, naming field and value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from omegaconf import ListConfig


def as_list(value: Any) -> list:
    if isinstance(value, list | tuple | ListConfig):
        return list(value)
    return [value]


def positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


def positive_int_list(field: str, value: Any) -> list[int]:
    items = as_list(value)
    if not items:
        raise ValueError(f"{field} must list at least one value, got {value!r}")
    return [
        positive_int(f"{field}[{i}]" if len(items) > 1 else field, v) for i, v in enumerate(items)
    ]


def finite_positive(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} must be finite and > 0, got {value!r}")
    return float(value)


def choice(field: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"unknown {field} {value!r}; choose one of: {', '.join(options)}")
    return value
