"""Argument checks shared by the layers, the converter, the CLI and the recipes.

One rule per kind of argument, so every entry point refuses the same values with the
same message (the argument's name, the allowed values, what was given).
"""
from __future__ import annotations

import argparse
import numbers
from typing import Any, Iterable

__all__ = ["MAX_COUNT", "MAX_AR_KERNEL_SIZE", "check_bool", "check_positive_int", "check_choice",
           "check_odd_kernel_size", "positive_int"]

MAX_COUNT = 2**24
"""Upper bound of every count the package takes (channels, sizes, dilations, steps): far above any
real network's, and low enough that a hostile or mistyped value (``10**30``, ``2**62 + 1``) is
refused before anything is allocated from it."""
MAX_AR_KERNEL_SIZE = 63
"""Largest AR filter: ``2Q + 1`` with ``Q = 31`` sequential 3-tap factors per axis (the paper uses
3 and 5); the parameter ``alpha`` and the solve grow with ``Q``."""


def _is_integer(value: Any) -> bool:
    """An integer, numpy's included (as ``nn.Conv2d`` accepts), but not ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, *, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """``int(value)`` if it is an integer (``numbers.Integral``, numpy's too; ``bool`` refused) in
    ``[minimum, maximum]``, else ``ValueError`` naming the argument and the bound."""
    if not _is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(value)


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


def check_odd_kernel_size(name: str, value: Any, *, maximum: int = MAX_AR_KERNEL_SIZE) -> int:
    """``int(value)`` if it is an odd integer in ``[3, maximum]`` (``3, 5, 7, ...``): ``2Q + 1``
    for ``Q >= 1`` factors."""
    if not _is_integer(value) or value < 3 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 3 (3, 5, 7, ...), got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be an odd integer <= {maximum}, got {value!r}")
    return int(value)


def positive_int(text: str) -> int:
    """argparse ``type``: :func:`check_positive_int`'s rule for a value typed on a command line."""
    try:
        return check_positive_int("the value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
