"""The member page's usage chart: parsed back as XML and measured."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from api.pages.chart import BOTTOM, LEFT, RIGHT, TOP, Limit, axis_top, date_ticks, usage_chart

NS = {"svg": "http://www.w3.org/2000/svg"}
KIB = 2**10
GIB = 2**30
DAY = dt.timedelta(days=1)
START = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
# Within rounding: coordinates are in tenths, so a tenth per rounded term.
SLACK = Decimal("0.2")


def parse(svg: Markup) -> ET.Element:
    return ET.fromstring(str(svg))


def coordinates(d: str) -> list[tuple[Decimal, Decimal]]:
    numbers = [Decimal(n) for n in re.findall(r"-?\d+(?:\.\d+)?", d)]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def usage_path(root: ET.Element) -> list[tuple[Decimal, Decimal]]:
    path = root.find("svg:path[@class='usage']", NS)
    assert path is not None
    return coordinates(path.attrib["d"])


def baseline(root: ET.Element) -> Decimal:
    axis = root.find("svg:line[@class='grid axis']", NS)
    assert axis is not None
    return Decimal(axis.attrib["y1"])


def days(*values: int) -> list[tuple[dt.datetime, int]]:
    return [(START + i * DAY, v) for i, v in enumerate(values)]


def test_root_element_is_an_accessible_scalable_svg() -> None:
    root = parse(usage_chart(days(GIB, 2 * GIB), [], title="Usage", id_prefix="usage"))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.attrib["viewBox"] == "0 0 720 240"
    assert "width" not in root.attrib
    assert "height" not in root.attrib
    assert root.attrib["preserveAspectRatio"] == "xMidYMid meet"
    assert root.attrib["role"] == "img"
    assert root.attrib["aria-labelledby"] == "usage-title usage-desc"
    title = root.find("svg:title", NS)
    desc = root.find("svg:desc", NS)
    assert title is not None
    assert desc is not None
    assert title.attrib["id"] == "usage-title"
    assert title.text == "Usage"
    assert desc.attrib["id"] == "usage-desc"


def test_width_and_height_set_the_view_box() -> None:
    root = parse(usage_chart(days(1), [], title="t", width=900, height=300))
    assert root.attrib["viewBox"] == "0 0 900 300"


def test_ids_are_prefixed_and_checked() -> None:
    a = parse(usage_chart(days(1), [], title="a"))
    b = parse(usage_chart(days(1), [], title="b", id_prefix="other"))
    ids_a = {e.attrib["id"] for e in a.iter() if "id" in e.attrib}
    ids_b = {e.attrib["id"] for e in b.iter() if "id" in e.attrib}
    assert ids_a == {"chart-title", "chart-desc"}
    assert not ids_a & ids_b
    with pytest.raises(ValueError, match="id_prefix"):
        usage_chart(days(1), [], title="t", id_prefix='x" onload="y')


def test_step_line_holds_each_value_until_the_next() -> None:
    root = parse(usage_chart(days(GIB, 2 * GIB, 2 * GIB, GIB), [], title="t"))
    path = usage_path(root)
    # Horizontal then vertical: every segment keeps x or y, never both changes.
    for (x1, y1), (x2, y2) in pairwise(path):
        assert x1 == x2 or y1 == y2
        assert x2 >= x1
    xs = sorted({x for x, _ in path})
    assert len(xs) == 4  # one x per day
    assert xs[0] == LEFT
    assert xs[-1] == 720 - RIGHT
    # Day spacing is even.
    steps = [b - a for a, b in pairwise(xs)]
    assert max(steps) - min(steps) <= SLACK
    # The first value holds across the whole first day.
    assert path[0][1] == path[1][1]
    assert path[1][0] == xs[1]


def test_twice_the_bytes_is_drawn_twice_as_high() -> None:
    root = parse(usage_chart(days(3 * GIB, 6 * GIB), [], title="t"))
    base = baseline(root)
    heights = sorted({base - y for _, y in usage_path(root)})
    assert len(heights) == 2
    low, high = heights
    assert low > 0
    assert abs(high - 2 * low) <= SLACK


def test_value_at_a_gridline_is_drawn_on_it() -> None:
    root = parse(usage_chart(days(5 * GIB, 10 * GIB), [], title="t"))
    grid = {
        t.text: Decimal(t.attrib["y"]) - 4 for t in root.findall("svg:text[@class='y-label']", NS)
    }
    ys = [y for _, y in usage_path(root)]
    assert grid["5 GiB"] in ys
    assert grid["10 GiB"] in ys


def test_limits_are_dashed_labelled_lines_at_their_size() -> None:
    limits = [Limit("soft limit", 10 * GIB, "soft"), Limit("hard limit", 12 * GIB, "hard")]
    root = parse(usage_chart(days(4 * GIB, 5 * GIB), limits, title="t"))
    base = baseline(root)
    top = Decimal(TOP)
    step, count = axis_top(12 * GIB)
    scale = step * count
    for cls, size, label in (
        ("soft", 10 * GIB, "soft limit 10.0 GiB"),
        ("hard", 12 * GIB, "hard limit 12.0 GiB"),
    ):
        group = root.find(f"svg:g[@class='limit {cls}']", NS)
        assert group is not None
        line = group.find("svg:line", NS)
        text = group.find("svg:text", NS)
        assert line is not None
        assert text is not None
        assert line.attrib["y1"] == line.attrib["y2"]
        assert "stroke-dasharray" in line.attrib
        expected = base - (base - top) * size / scale
        assert abs(Decimal(line.attrib["y1"]) - expected) <= SLACK
        assert text.text == label
        # Beside the right end of the line.
        assert Decimal(text.attrib["x"]) > Decimal(line.attrib["x2"])
    # Gridlines: 3 to 5, the top one above the highest limit by at least a tenth.
    assert 2 <= count <= 4
    assert scale >= 12 * GIB * 11 // 10


def test_close_limits_get_labels_that_do_not_overlap() -> None:
    limits = [Limit("soft limit", 10 * GIB, "soft"), Limit("hard limit", 10 * GIB + 1, "hard")]
    root = parse(usage_chart(days(GIB), limits, title="t"))
    ys = sorted(Decimal(t.attrib["y"]) for t in root.findall("svg:g/svg:text", NS))
    assert ys[1] - ys[0] >= 12


def test_unset_limit_draws_nothing() -> None:
    root = parse(usage_chart(days(GIB), [Limit("soft limit", None, "soft")], title="t"))
    assert root.find("svg:g", NS) is None


def test_gridlines_are_labelled_with_binary_sizes() -> None:
    root = parse(usage_chart(days(GIB, 9 * GIB), [], title="t"))
    labels = [t.text for t in root.findall("svg:text[@class='y-label']", NS)]
    assert labels == ["0 B", "5 GiB", "10 GiB"]
    assert 3 <= len(root.findall("svg:line[@class]", NS)) <= 5


def test_month_starts_label_a_long_range() -> None:
    points = [(START + i * DAY, GIB) for i in range(91)]  # 1 September to 30 November
    root = parse(usage_chart(points, [], title="t"))
    labels = [t.text for t in root.findall("svg:text[@class='x-label']", NS)]
    assert labels == ["1 Sep", "1 Oct", "1 Nov"]


def test_a_month_is_labelled_evenly_ending_today() -> None:
    now = dt.datetime(2026, 11, 30, 14, 5, tzinfo=dt.UTC)
    points = [(now - dt.timedelta(days=30) + i * DAY, GIB) for i in range(1, 31)]
    ticks = date_ticks(points[0][0], points[-1][0], 5)
    assert ticks[-1] == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    assert 3 <= len(ticks) <= 5
    gaps = {b - a for a, b in pairwise(ticks)}
    assert len(gaps) == 1


def test_many_months_are_thinned() -> None:
    ticks = date_ticks(START, START + 800 * DAY, 5)
    assert 2 <= len(ticks) <= 5
    assert all(t.day == 1 for t in ticks)


def test_description_states_first_last_and_highest() -> None:
    points = [(START, 3 * GIB), (START + 40 * DAY, 9 * GIB // 2), (START + 90 * DAY, 4 * GIB)]
    limits = [Limit("soft limit", 10 * GIB, "soft")]
    root = parse(usage_chart(points, limits, title="t"))
    desc = root.find("svg:desc", NS)
    assert desc is not None
    assert desc.text == (
        "From 3.0 GiB on 1 September 2026 to 4.0 GiB on 30 November 2026;"
        " highest 4.5 GiB. Soft limit 10.0 GiB."
    )


def test_hostile_title_and_labels_are_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    svg = usage_chart(days(GIB), [Limit("<b>limit</b>", GIB, 'soft" onclick="x')], title=hostile)
    assert "<script>" not in svg
    assert "<b>" not in svg
    root = parse(svg)
    title = root.find("svg:title", NS)
    assert title is not None
    assert title.text == hostile
    group = root.find("svg:g", NS)
    assert group is not None
    assert group.attrib["class"] == 'limit soft" onclick="x'
    assert "onclick" not in group.attrib


def test_no_points_says_so() -> None:
    root = parse(usage_chart([], [Limit("soft limit", GIB, "soft")], title="t"))
    words = [t.text for t in root.findall("svg:text", NS)]
    assert words == ["No measurements yet"]
    desc = root.find("svg:desc", NS)
    assert desc is not None
    assert desc.text == "No measurements yet."
    assert root.find("svg:path", NS) is None


def test_one_point_is_a_flat_line_across() -> None:
    root = parse(usage_chart(days(2 * GIB), [], title="t"))
    path = usage_path(root)
    assert {y for _, y in path} == {path[0][1]}
    assert path[0][0] == LEFT
    assert path[-1][0] == 720 - RIGHT
    desc = root.find("svg:desc", NS)
    assert desc is not None
    assert desc.text == "2.0 GiB on 1 September 2026."


def test_zero_usage_without_limits_has_a_kib_scale() -> None:
    root = parse(usage_chart(days(0, 0, 0), [], title="t"))
    labels = [t.text for t in root.findall("svg:text[@class='y-label']", NS)]
    assert labels[0] == "0 B"
    assert labels[-1] == "1 KiB"
    base = baseline(root)
    assert {y for _, y in usage_path(root)} == {base}


def test_naive_and_unordered_points_are_accepted() -> None:
    aware = usage_chart(days(GIB, 2 * GIB), [], title="t")
    naive = usage_chart(
        [(START.replace(tzinfo=None) + DAY, 2 * GIB), (START.replace(tzinfo=None), GIB)],
        [],
        title="t",
    )
    assert aware == naive


def test_characters_xml_cannot_hold_are_dropped() -> None:
    root = parse(usage_chart(days(GIB), [], title="a\x00b\x1bc"))
    title = root.find("svg:title", NS)
    assert title is not None
    assert title.text == "abc"


def test_too_small_a_chart_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        usage_chart(days(1), [], title="t", width=100)


def test_axis_steps_are_round_and_reach_past_the_highest() -> None:
    assert axis_top(0) == (256, 4)
    for highest in (1, 1000, KIB * 1000, 7 * GIB, 10 * GIB, 1100 * GIB, 2**62):
        step, count = axis_top(highest)
        assert 2 <= count <= 4
        assert step * count * 10 >= highest * 11


def all_numbers(root: ET.Element) -> list[tuple[Decimal, Decimal]]:
    """Every (x, y) a chart places: path vertices, line ends, text anchors."""
    found: list[tuple[Decimal, Decimal]] = []
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "path":
            found.extend(coordinates(element.attrib["d"]))
        elif tag == "line":
            a = element.attrib
            found.append((Decimal(a["x1"]), Decimal(a["y1"])))
            found.append((Decimal(a["x2"]), Decimal(a["y2"])))
        elif tag == "text":
            found.append((Decimal(element.attrib["x"]), Decimal(element.attrib["y"])))
    return found


# Hypothesis takes naive bounds and adds the zone itself.
instants = st.datetimes(
    min_value=dt.datetime(1970, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]),
)
sizes = st.integers(min_value=0, max_value=2**70)


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(instants, sizes), max_size=40),
    limits=st.lists(
        st.builds(
            Limit,
            label=st.text(max_size=20),  # control characters too
            bytes=st.one_of(st.none(), sizes),
            css_class=st.sampled_from(["soft", "hard", '"<&>', "\x00"]),
        ),
        max_size=3,
    ),
    title=st.text(max_size=40),
    width=st.integers(min_value=LEFT + RIGHT + 120, max_value=2000),
    height=st.integers(min_value=TOP + BOTTOM + 80, max_value=1000),
)
def test_any_input_is_well_formed_and_inside_the_view_box(
    points: list[tuple[dt.datetime, int]],
    limits: list[Limit],
    title: str,
    width: int,
    height: int,
) -> None:
    root = parse(usage_chart(points, limits, title=title, width=width, height=height))
    title_element = root.find("svg:title", NS)
    assert title_element is not None
    if title.isprintable():
        assert (title_element.text or "") == title
    for x, y in all_numbers(root):
        assert 0 <= x <= width
        assert 0 <= y <= height
    if points:
        path = usage_path(root)
        for (x1, y1), (x2, y2) in pairwise(path):
            assert x1 == x2 or y1 == y2
