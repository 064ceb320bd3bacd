"""``ConversionReport``: what :func:`arma_plugin.armafy` converted, what not, and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

CONVERTED = "converted"
ALREADY = "already ARMA"
SKIPPED = "skipped"


@dataclass
class ConvEntry:
    """One 2-D conv: a module (``kind="module"``) or a functional ``F.conv2d`` call site."""

    name: str
    kind: str
    type: str
    kernel: tuple[int, int] | None
    groups: int | None
    dilation: tuple[int, int] | None
    calls: int | None
    status: str
    reason: str = ""


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
        return sum(e.status == CONVERTED for e in self.entries)

    @property
    def already_converted(self) -> int:
        return sum(e.status == ALREADY for e in self.entries)

    @property
    def skipped(self) -> dict[str, int]:
        """Number of skipped convs per reason."""
        return dict(Counter(e.reason for e in self.entries if e.status == SKIPPED))

    @property
    def changed(self) -> bool:
        return self.converted > 0 or bool(self.nonlocal_inserted)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: plain dicts, lists, strings and numbers."""
        out = asdict(self)
        for e in out["entries"]:
            for key in ("kernel", "dilation"):
                if e[key] is not None:
                    e[key] = list(e[key])
        out.update(converted=self.converted, already_converted=self.already_converted,
                   skipped=self.skipped)
        return out

    def summary(self) -> str:
        how = "traced with torch.fx" if self.traced else f"module walk (trace failed: {self.trace_error})"
        if self.untraceable:
            how += f", opaque: {', '.join(self.untraceable)}"
        parts = [f"{self.converted} converted"]
        if self.already_converted:
            parts.append(f"{self.already_converted} already ARMA")
        parts += [f"{n} skipped ({reason})" for reason, n in sorted(self.skipped.items())]
        text = f"armafy [{self.mode} mode, {how}]: {len(self.entries)} convs: " + ", ".join(parts)
        text += f"; {self.ar_params_added} AR parameters added"
        if self.nonlocal_inserted:
            text += f"; non-local blocks after {', '.join(self.nonlocal_inserted)}"
        if not self.changed:
            text += "; nothing changed"
        return text

    def __str__(self) -> str:
        header = ("name", "type", "kernel", "groups", "dilation", "calls", "status")
        rows = [header]
        for e in self.entries:
            status = e.status if not e.reason else f"{e.status}: {e.reason}"
            rows.append((e.name, e.type, _fmt(e.kernel), str(e.groups), _fmt(e.dilation),
                         "?" if e.calls is None else str(e.calls), status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [self.summary()])


def _fmt(pair: tuple[int, int] | None) -> str:
    return "?" if pair is None else "x".join(map(str, pair))
