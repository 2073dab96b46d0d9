"""An inline SVG chart of a member's usage over time, for the member page.

Pure Python and integer arithmetic only: sizes are exact ints and times are
counted in whole microseconds, so a chart never depends on float rounding.
Coordinates are kept in tenths of a viewBox unit and written with one
decimal. Colours come from the page's stylesheet through CSS classes; the
presentation attributes here are only fallbacks (CSS overrides them), and
limits are told apart by dashes and words, never by colour alone.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from markupsafe import Markup

from quotad.formatting import human_size
from quotad.timeutil import MONTHS, day_words

SVG_NS = "http://www.w3.org/2000/svg"

# Margins in viewBox units: y labels on the left, limit labels on the right
# (room for "hard limit 1023.9 GiB" at the stylesheet's 12px).
LEFT = 56
RIGHT = 140
TOP = 12
BOTTOM = 28
MIN_WIDTH = LEFT + RIGHT + 120
MIN_HEIGHT = TOP + BOTTOM + 80
# The y axis covers at least this much, so an empty account still has a scale.
FLOOR_BYTES = 1024
# At most this many size steps above the baseline (3 to 5 gridlines with it).
MAX_STEPS = 4
# Step sizes per binary unit; 256 and 512 let a scale cross into the next
# unit on round figures (768 GiB, 1 TiB, 1.5 TiB) where 500 would not.
STEP_MULTIPLES = (1, 2, 5, 10, 20, 50, 100, 200, 256, 512)
# Limit labels closer than this (in tenths) are pushed apart.
LABEL_GAP = 140
# A date label needs about this much width (in tenths).
DATE_LABEL_WIDTH = 900
MAX_DATE_LABELS = 6

_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# Characters XML 1.0 cannot hold even escaped; dropped so that any name still parses.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class Limit:
    """A horizontal line at BYTES, labelled "LABEL <size>"; None draws nothing."""

    label: str
    bytes: int | None
    css_class: str


def usage_chart(
    points: Sequence[tuple[dt.datetime, int]],
    limits: Sequence[Limit],
    *,
    title: str,
    width: int = 720,
    height: int = 240,
    id_prefix: str = "chart",
) -> Markup:
    """A complete <svg> element: usage as a step line over time, limits as dashed lines.

    POINTS are (instant, bytes), in any order; a naive instant is taken as UTC.
    ID_PREFIX keeps the element ids unique when a page holds several charts.
    """
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"a chart needs at least {MIN_WIDTH}x{MIN_HEIGHT} units")
    if not _ID.match(id_prefix):
        raise ValueError(f"id_prefix must be a letter then letters, digits, - or _: {id_prefix!r}")
    # Usage is never negative in the ledger; clamping keeps a bad value on the chart.
    data = sorted(((_utc(at), max(b, 0)) for at, b in points), key=lambda p: p[0])
    drawn = [lim for lim in limits if lim.bytes is not None]
    if data:
        body = _plot(data, drawn, width * 10, height * 10)
        description = _description(data, drawn)
    else:
        body = [
            _text(
                "No measurements yet",
                width * 5,
                height * 5,
                cls="empty",
                anchor="middle",
            )
        ]
        description = "No measurements yet."
    head = Markup(
        '<svg xmlns="{ns}" viewBox="0 0 {w} {h}" preserveAspectRatio="xMidYMid meet"'
        ' role="img" aria-labelledby="{p}-title {p}-desc" font-size="12">'
        '<title id="{p}-title">{title}</title><desc id="{p}-desc">{desc}</desc>'
    ).format(
        ns=SVG_NS,
        w=width,
        h=height,
        p=id_prefix,
        title=_xml_text(title),
        desc=_xml_text(description),
    )
    return head + Markup("").join(body) + Markup("</svg>")


def _xml_text(words: str) -> str:
    return _NOT_XML.sub("", words)


def _utc(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None:
        return at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC)


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _num(tenths: int) -> str:
    """A coordinate in tenths, written as a decimal ("12.3", "40")."""
    whole, tenth = divmod(tenths, 10)
    return f"{whole}.{tenth}" if tenth else str(whole)


def axis_top(highest: int) -> tuple[int, int]:
    """(step, number of steps) for a y axis reaching past HIGHEST by a tenth."""
    wanted = max(-(-highest * 11 // 10), FLOOR_BYTES)
    for step in _steps():
        count = -(-wanted // step)
        if count <= MAX_STEPS:
            return step, count
    raise AssertionError("unreachable: steps grow without bound")  # pragma: no cover


def _steps() -> Iterator[int]:
    unit = 1
    while True:
        for multiple in STEP_MULTIPLES:
            yield multiple * unit
        unit *= 1024


def axis_size(n: int) -> str:
    """A gridline's size: human_size without a needless ".0" (steps are round)."""
    return human_size(n).replace(".0 ", " ")


def _plot(data: list[tuple[dt.datetime, int]], limits: list[Limit], w: int, h: int) -> list[Markup]:
    left, right, top, bottom = LEFT * 10, w - RIGHT * 10, TOP * 10, h - BOTTOM * 10
    plot_w, plot_h = right - left, bottom - top
    highest = max([b for _, b in data] + [lim.bytes or 0 for lim in limits])
    step, count = axis_top(highest)
    scale = step * count

    def y(n: int) -> int:
        return bottom - min(max(n, 0), scale) * plot_h // scale

    first, last = data[0][0], data[-1][0]
    span = _micros(last - first)

    def x(at: dt.datetime) -> int:
        if span == 0:
            return left
        return left + _micros(at - first) * plot_w // span

    out: list[Markup] = []
    for i in range(count + 1):
        gy = y(i * step)
        cls = "grid axis" if i == 0 else "grid"
        out.append(_line(left, gy, right, gy, cls=cls, stroke_width=1))
        out.append(_text(axis_size(i * step), left - 60, gy + 40, cls="y-label", anchor="end"))

    # The step line: each measurement holds until the next one.
    if span == 0:
        # One instant (however many points): its latest value, drawn flat across.
        xy = [(left, y(data[-1][1])), (right, y(data[-1][1]))]
    else:
        xy = [(x(at), y(b)) for at, b in data]
    corners = [xy[0]]
    for (_, prev_y), (cx, cy) in pairwise(xy):
        for corner in ((cx, prev_y), (cx, cy)):
            if corner != corners[-1]:
                corners.append(corner)
    line = " L".join(f"{_num(cx)} {_num(cy)}" for cx, cy in corners)
    area = f"M{line} L{_num(corners[-1][0])} {_num(bottom)} L{_num(left)} {_num(bottom)} Z"
    out.append(
        Markup('<path class="area" d="{d}" fill="currentColor" opacity="0.15"/>').format(d=area)
    )
    out.append(
        Markup(
            '<path class="usage" d="{d}" fill="none" stroke="currentColor" stroke-width="2"'
            ' stroke-linejoin="miter"/>'
        ).format(d="M" + line)
    )

    out.extend(_limit_lines(limits, y, left=left, right=right, top=top, bottom=bottom))
    out.extend(_date_labels(first, last, x, plot_w, bottom + 170))
    return out


def _limit_lines(
    limits: list[Limit],
    y: Callable[[int], int],
    *,
    left: int,
    right: int,
    top: int,
    bottom: int,
) -> list[Markup]:
    placed = sorted(((y(lim.bytes or 0), lim) for lim in limits), key=lambda p: p[0])
    out: list[Markup] = []
    label_y = top - LABEL_GAP
    for ly, lim in placed:
        # Labels sit beside their line, pushed down just enough not to overlap.
        label_y = min(max(ly + 40, label_y + LABEL_GAP), bottom + 40)
        out.append(
            Markup('<g class="limit {cls}">').format(cls=_xml_text(lim.css_class))
            + _line(left, ly, right, ly, cls="limit-line", stroke_width=2, dashed=True)
            + _text(
                f"{lim.label} {human_size(lim.bytes or 0)}",
                right + 60,
                label_y,
                cls="limit-label",
                anchor="start",
            )
            + Markup("</g>")
        )
    return out


def _date_labels(
    first: dt.datetime, last: dt.datetime, x: Callable[[dt.datetime], int], plot_w: int, y: int
) -> list[Markup]:
    most = max(1, min(MAX_DATE_LABELS, plot_w // DATE_LABEL_WIDTH))
    return [
        _text(f"{at.day} {MONTHS[at.month - 1][:3]}", x(at), y, cls="x-label")
        for at in date_ticks(first, last, most)
    ]


def date_ticks(first: dt.datetime, last: dt.datetime, most: int) -> list[dt.datetime]:
    """At most MOST midnights in [FIRST, LAST]: month starts if two or more, else evenly spaced."""
    day = dt.timedelta(days=1)
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
    if midnight < first:
        try:
            midnight += day
        except OverflowError:
            return [first]
    final = last.replace(hour=0, minute=0, second=0, microsecond=0)
    if midnight > final:
        return [first]
    months = []
    month = midnight.replace(day=1)
    while month <= final:
        if month >= midnight:
            months.append(month)
        try:
            month = (month + 32 * day).replace(day=1)
        except OverflowError:
            break
    if len(months) >= 2:  # noqa: PLR2004 - one month start says little about the scale
        every = -(-len(months) // most)
        return months[::every]
    days = (final - midnight).days
    every = max(1, -(-days // max(1, most - 1)))
    # Counted back from the newest day, so the latest date is always labelled.
    return sorted(final - i * every * day for i in range(days // every + 1))


def _description(data: list[tuple[dt.datetime, int]], limits: list[Limit]) -> str:
    (first, first_bytes), (last, last_bytes) = data[0], data[-1]
    highest = max(b for _, b in data)
    if len(data) == 1:
        text = f"{human_size(last_bytes)} on {day_words(last)}."
    else:
        text = (
            f"From {human_size(first_bytes)} on {day_words(first)}"
            f" to {human_size(last_bytes)} on {day_words(last)}; highest {human_size(highest)}."
        )
    if limits:
        named = "; ".join(f"{lim.label} {human_size(lim.bytes or 0)}" for lim in limits)
        text += f" {named[:1].upper()}{named[1:]}."
    return text


def _line(
    x1: int, y1: int, x2: int, y2: int, *, cls: str, stroke_width: int, dashed: bool = False
) -> Markup:
    dash = Markup(' stroke-dasharray="6 4"') if dashed else Markup("")
    return Markup(
        '<line class="{cls}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"'
        ' stroke="currentColor" stroke-width="{sw}"{dash}/>'
    ).format(
        cls=cls, x1=_num(x1), y1=_num(y1), x2=_num(x2), y2=_num(y2), sw=stroke_width, dash=dash
    )


def _text(words: str, x: int, y: int, *, cls: str, anchor: str = "middle") -> Markup:
    return Markup(
        '<text class="{cls}" x="{x}" y="{y}" text-anchor="{anchor}" fill="currentColor">'
        "{words}</text>"
    ).format(cls=cls, x=_num(x), y=_num(y), anchor=anchor, words=_xml_text(words))
