"""``ConversionReport``: what :func:`arma_plugin.armafy` converted, what not, and why."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Mapping

from ..table import format_table


class _ValueEnum(str, Enum):
    """A str enum that prints and hashes as its value, so it is interchangeable with the
    plain-string keys read back from ``config.json``."""

    def __str__(self) -> str:
        return self.value

    def __hash__(self) -> int:  # Enum hashes the member name; hash the value so "key" lookups work
        return hash(self.value)


class ConvStatus(_ValueEnum):
    """What ``armafy`` did with one conv; the value is what ``to_dict`` writes."""

    CONVERTED = "converted"
    ALREADY = "already ARMA"
    SKIPPED = "skipped"


class SkipReason(_ValueEnum):
    """Why a conv was left unchanged. The value is the stable key written to ``config.json``;
    :attr:`explanation` is the sentence for people."""

    NEVER_CALLED = "never_called"
    USED_FUNCTIONALLY = "weight_used_functionally"
    POINTWISE = "pointwise"
    NOT_TARGETED = "not_targeted"
    EXCLUDED = "excluded"
    ANISOTROPIC_DILATION = "anisotropic_dilation"
    INSIDE_NONLOCAL = "inside_nonlocal"
    FUNCTIONAL_IN_MODULE_MODE = "functional_in_module_mode"
    UNKNOWN_CHANNELS = "unknown_channels"

    @property
    def explanation(self) -> str:
        return _EXPLANATIONS[self]

    @classmethod
    def parse(cls, value: str) -> "SkipReason":
        """The reason whose stable value is ``value``; anything else is a ``ValueError`` that
        lists the known values."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown skip reason {value!r}; known reasons are {[r.value for r in cls]}") from None


_EXPLANATIONS = {
    SkipReason.NEVER_CALLED: "never called in forward",
    SkipReason.USED_FUNCTIONALLY: "weight used by a functional conv2d call site",
    SkipReason.POINTWISE: "pointwise 1x1 (include_pointwise=False)",
    SkipReason.NOT_TARGETED: "not in target_modules",
    SkipReason.EXCLUDED: "in exclude_modules",
    SkipReason.ANISOTROPIC_DILATION: "dilation differs per axis (ar_dilation='match' needs equal)",
    SkipReason.INSIDE_NONLOCAL: "inside a NonLocal2d block",
    SkipReason.FUNCTIONAL_IN_MODULE_MODE: "functional conv2d call site (converted only with mode='graph')",
    SkipReason.UNKNOWN_CHANNELS: "output channels unknown (pass example_inputs)",
}


@dataclass
class ConvEntry:
    """One 2-D conv: a module (``kind="module"``) or a functional ``F.conv2d`` call site.
    ``reason`` is set exactly when ``status`` is ``SKIPPED``."""

    name: str
    kind: str
    type: str
    kernel: tuple[int, int] | None
    groups: int | None
    dilation: tuple[int, int] | None
    calls: int | None
    status: ConvStatus
    reason: SkipReason | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(status=self.status.value, reason=None if self.reason is None else self.reason.value)
        for key in ("kernel", "dilation"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ConvEntry":
        _check_keys("ConvEntry", data, [f.name for f in dataclasses.fields(cls)])
        values = dict(data)
        for key in ("kernel", "dilation"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        try:
            values["status"] = ConvStatus(values["status"])
        except ValueError:
            raise ValueError(f"ConvEntry {values.get('name')!r}: unknown status {values['status']!r}; "
                             f"known statuses are {[s.value for s in ConvStatus]}") from None
        if values.get("reason") is not None:
            values["reason"] = SkipReason.parse(values["reason"])
        return cls(**values)


@dataclass
class ConversionReport:
    """Per-conv outcome of one ``armafy`` call, with counts.

    ``calls`` is how often the traced forward calls the conv (``None`` when it is not known:
    no trace, or the conv sits inside a module the tracer must treat as opaque).
    ``untraceable`` maps the modules that were kept opaque because their forward could not be
    traced to the trace error.
    """

    mode: str
    traced: bool
    trace_error: str | None = None
    untraceable: dict[str, str] = field(default_factory=dict)
    entries: list[ConvEntry] = field(default_factory=list)
    nonlocal_inserted: list[str] = field(default_factory=list)
    ar_params_added: int = 0

    @property
    def converted(self) -> int:
        return sum(e.status == ConvStatus.CONVERTED for e in self.entries)

    @property
    def already_converted(self) -> int:
        return sum(e.status == ConvStatus.ALREADY for e in self.entries)

    @property
    def skipped(self) -> dict[SkipReason, int]:
        """Number of skipped convs per reason."""
        return dict(Counter(e.reason for e in self.entries if e.status == ConvStatus.SKIPPED))

    @property
    def changed(self) -> bool:
        return self.converted > 0 or bool(self.nonlocal_inserted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain dicts, lists, strings and numbers; reasons by their stable values."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(untraceable=dict(self.untraceable), entries=[e.to_dict() for e in self.entries],
                   nonlocal_inserted=list(self.nonlocal_inserted), converted=self.converted,
                   already_converted=self.already_converted,
                   skipped={reason.value: n for reason, n in self.skipped.items()})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ConversionReport":
        """Inverse of :meth:`to_dict`. The counts ``to_dict`` adds are recomputed from the
        entries, so they must agree with them."""
        derived = ("converted", "already_converted", "skipped")
        own = [f.name for f in dataclasses.fields(cls)]
        _check_keys("ConversionReport", data, own + list(derived))
        missing = [k for k in ("mode", "traced") if k not in data]
        if missing:
            raise ValueError(f"ConversionReport.from_dict: missing keys {missing}")
        values = {k: v for k, v in data.items() if k in own}
        values["entries"] = [ConvEntry.from_dict(e) for e in data.get("entries", [])]
        report = cls(**values)
        for key in derived:
            given = data.get(key)
            if key == "skipped" and isinstance(given, Mapping):
                given = {SkipReason.parse(reason): n for reason, n in given.items()}
            if key in data and given != getattr(report, key):
                raise ValueError(f"ConversionReport.from_dict: {key!r} is {data[key]!r} but the entries "
                                 f"give {getattr(report, key)!r}")
        return report

    def summary(self) -> str:
        how = "traced with torch.fx" if self.traced else f"module walk (trace failed: {self.trace_error})"
        if self.untraceable:
            how += f", opaque: {', '.join(self.untraceable)}"
        parts = [f"{self.converted} converted"]
        if self.already_converted:
            parts.append(f"{self.already_converted} already ARMA")
        parts += [f"{n} skipped ({reason.explanation})"
                  for reason, n in sorted(self.skipped.items(), key=lambda item: item[0].explanation)]
        text = f"armafy [{self.mode} mode, {how}]: {len(self.entries)} convs: " + ", ".join(parts)
        text += f"; {self.ar_params_added} AR parameters added"
        if self.nonlocal_inserted:
            text += f"; non-local blocks after {', '.join(self.nonlocal_inserted)}"
        if not self.changed:
            text += "; nothing changed"
        return text

    def __str__(self) -> str:
        rows = [(e.name, e.type, _pair_text(e.kernel), e.groups, _pair_text(e.dilation),
                 "?" if e.calls is None else e.calls,
                 e.status.value if e.reason is None else f"{e.status.value}: {e.reason.explanation}")
                for e in self.entries]
        table = format_table(("name", "type", "kernel", "groups", "dilation", "calls", "status"), rows,
                             markdown=False)
        return table + "\n" + self.summary()


def _pair_text(pair: tuple[int, int] | None) -> str:
    return "?" if pair is None else "x".join(map(str, pair))


def _check_keys(what: str, data: Any, allowed: list[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}.from_dict expects a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{what}.from_dict: unknown keys {unknown}; allowed keys are {allowed}")
