"""``ARMAConfig``: what :func:`arma_plugin.armafy` converts and how (PEFT-style config).

The AR part follows Su et al., NeurIPS 2020: Def. 5 (separable AR filter of size
``ar_kernel_size = 2Q + 1``), Thm 7 (``reparam``), Sec. 4 (non-local blocks after
chosen layers, the "NL ARMA U-Net" of Table 2).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import regex

from ..layers.autoregressive import BOUNDARIES
from ..validation import check_bool, check_choice, check_odd_kernel_size, check_positive_int

MODES = ("module", "graph")
ModulePattern = str | Sequence[str] | None
# A module-name regex may come from a downloaded config.json. Matching uses the ``regex`` package
# with a per-name time limit, so a pattern that backtracks catastrophically raises instead of
# hanging the caller; a real pattern matches a module name in microseconds.
MATCH_TIMEOUT_S = 0.25
MAX_PATTERN_LENGTH = 1000


class ConfigMismatchError(ValueError):
    """An :class:`ARMAConfig` that does not fit the model it is applied to: a ``target_modules``
    entry that matches no conv, or a ``nonlocal_after`` name that is no module of the model or
    names one that does not output a ``[B, C, H, W]`` feature map."""


def _normalise_patterns(name: str, value: Any) -> str | tuple[str, ...] | None:
    """``None``, a regex string, or a list of exact names / name suffixes (as PEFT's ``target_modules``)."""
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > MAX_PATTERN_LENGTH:
            raise ValueError(f"ARMAConfig.{name} regex must be at most {MAX_PATTERN_LENGTH} characters, "
                             f"got {len(value)}")
        try:
            _compiled(value)
        except regex.error as err:
            raise ValueError(f"ARMAConfig.{name} is a string, so it must be a valid regex: {err}") from err
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) and v for v in value):
        if not value:
            raise ValueError(f"ARMAConfig.{name} must be None, a regex string or a non-empty list of module names")
        return tuple(value)
    raise ValueError(f"ARMAConfig.{name} must be None, a regex string or a list of module names "
                     f"(exact names or name suffixes), got {value!r}")


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def matches(name: str, patterns: str | tuple[str, ...]) -> bool:
    """PEFT rule: a string is a regex that must match the whole name; a list entry matches
    the exact name or a ``.``-separated suffix of it (``"conv1"`` matches ``"layer1.0.conv1"``)."""
    if isinstance(patterns, str):
        try:
            return _compiled(patterns).fullmatch(name, timeout=MATCH_TIMEOUT_S) is not None
        except TimeoutError as err:
            raise ValueError(f"the module-name regex {patterns!r} took over {MATCH_TIMEOUT_S} s to match "
                             f"{name!r} (catastrophic backtracking); use a simpler regex or a list of "
                             "module names") from err
    return any(name == p or name.endswith("." + p) for p in patterns)


@dataclass
class ARMAConfig:
    """How to armafy a model. Every field is validated in ``__post_init__``.

    Attributes:
        ar_kernel_size: size ``2Q + 1`` of the separable AR filter (Def. 5); odd, >= 3.
        boundary: ``"circular"`` (the paper's FFT solve) or ``"zeros"`` (exact non-periodic solve).
        reparam: use the stable re-parameterisation of Thm 7 (``alpha -> tanh``); without it the
            raw taps are learned and training can diverge (paper Fig. 5).
        target_modules: only convert convs whose names match: ``None`` (all), a regex string
            (full match) or a list of exact names / name suffixes.
        exclude_modules: convs whose names match are not converted (same rules).
        include_pointwise: also convert 1x1 convs (by default only larger kernels are converted).
        ar_dilation: the AR taps' spacing, an int >= 1, or ``"match"`` to use each conv's own
            dilation (AR taps at ``±d`` for a conv with dilation ``d``).
        nonlocal_after: names of modules after which a zero-initialised :class:`NonLocal2d` is
            inserted (identity at init).
        mode: ``"module"`` swaps modules in place and keeps the model's class;
            ``"graph"`` returns a ``torch.fx.GraphModule`` with an AR node after every 2-D conv
            call site, functional ``F.conv2d`` calls included.
    """

    ar_kernel_size: int = 3
    boundary: str = "circular"
    reparam: bool = True
    target_modules: ModulePattern = None
    exclude_modules: ModulePattern = None
    include_pointwise: bool = False
    ar_dilation: int | str = 1
    nonlocal_after: Sequence[str] = field(default_factory=tuple)
    mode: str = "module"

    def __post_init__(self) -> None:
        self.ar_kernel_size = check_odd_kernel_size("ARMAConfig.ar_kernel_size", self.ar_kernel_size)
        check_choice("ARMAConfig.boundary", self.boundary, BOUNDARIES)
        check_bool("ARMAConfig.reparam", self.reparam)
        check_bool("ARMAConfig.include_pointwise", self.include_pointwise)
        self.target_modules = _normalise_patterns("target_modules", self.target_modules)
        self.exclude_modules = _normalise_patterns("exclude_modules", self.exclude_modules)
        if self.ar_dilation != "match":
            self.ar_dilation = check_positive_int("ARMAConfig.ar_dilation (or the string 'match')",
                                                  self.ar_dilation)
        nl = self.nonlocal_after
        if isinstance(nl, str) or not isinstance(nl, Sequence) or not all(isinstance(n, str) and n for n in nl):
            raise ValueError(f"ARMAConfig.nonlocal_after must be a list of module names, got {nl!r}")
        self.nonlocal_after = tuple(nl)
        check_choice("ARMAConfig.mode", self.mode, MODES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); ``ARMAConfig.from_dict(c.to_dict()) == c``."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ARMAConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, not ignored."""
        if not isinstance(data, Mapping):
            raise ValueError(f"ARMAConfig.from_dict expects a mapping, got {type(data).__name__}")
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"ARMAConfig.from_dict: unknown keys {unknown}; allowed keys are {allowed}")
        return cls(**data)

    def replace(self, **overrides: Any) -> "ARMAConfig":
        """A copy with some fields changed (validated); unknown names are an error."""
        allowed = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ValueError(f"unknown ARMAConfig fields {unknown}; allowed fields are {allowed}")
        return dataclasses.replace(self, **overrides)
