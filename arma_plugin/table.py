"""One plain-text table formatter for every printed table (CLI, benchmarks, sweeps, recipes)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["format_table"]


def _cell(value: object, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, float_format)
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], *,
                 float_format: str = ".4g", markdown: bool = True) -> str:
    """Columns padded to a common width; ``markdown`` adds pipes and the ``---`` rule.

    Floats use ``float_format``; ``None`` prints as ``-``; other values use ``str``.
    """
    lines = [[str(h) for h in header]] + [[_cell(v, float_format) for v in row] for row in rows]
    if any(len(line) != len(header) for line in lines):
        raise ValueError(f"every row must have {len(header)} cells (the header's), "
                         f"got row lengths {sorted({len(line) for line in lines})}")
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    if not markdown:
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
    text = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)
