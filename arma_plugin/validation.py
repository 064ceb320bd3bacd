"""Argument checks shared by the layers, the converter, the CLI and the recipes.

One rule per kind of argument, so every entry point refuses the same values with the
same message (the argument's name, the allowed values, what was given).
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable

__all__ = ["check_bool", "check_positive_int", "check_choice", "check_odd_kernel_size", "positive_int"]


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` if it is an ``int`` (``bool`` refused) ``>= minimum``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not ``0``/``1``, not a string), else ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else ``ValueError`` listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_odd_kernel_size(name: str, value: Any) -> int:
    """An odd integer ``>= 3`` (``3, 5, 7, ...``): ``2Q + 1`` for ``Q >= 1`` factors."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 3 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 3 (3, 5, 7, ...), got {value!r}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type``: :func:`check_positive_int`'s rule for a value typed on a command line."""
    try:
        return check_positive_int("the value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
