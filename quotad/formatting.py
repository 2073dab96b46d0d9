"""Plain-text tables and sizes for people at a terminal."""

from __future__ import annotations

from collections.abc import Sequence

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_size(n: int) -> str:
    """A short binary-prefixed size; exact in bytes below 1 KiB."""
    if n < 1024:  # noqa: PLR2004 - one KiB
        return f"{n} B"
    value = n
    unit = 0
    while value >= 1024 * 1024 and unit < len(_UNITS) - 2:
        value //= 1024
        unit += 1
    # One decimal from integer arithmetic; rounding down never overstates use.
    tenths = value * 10 // 1024
    return f"{tenths // 10}.{tenths % 10} {_UNITS[unit + 1]}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
