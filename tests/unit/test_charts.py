"""Server-side SVG line charts: lines broken at gaps, a scale that holds the values,
and a name and summary a screen reader can give."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from app.web.charts import format_bytes_per_second, line_chart

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _svg(markup: str) -> ElementTree.Element:
    svg = re.search(r"<svg.*</svg>", markup, re.S)
    assert svg is not None
    return ElementTree.fromstring(svg.group(0).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))


def _minutes(*values: float | None) -> list[tuple[datetime, float | None]]:
    return [(START + timedelta(minutes=i), v) for i, v in enumerate(values)]


def test_a_none_value_breaks_the_line_and_a_lone_point_is_a_dot():
    svg = _svg(line_chart(_minutes(10, 20, None, 30, 40, None, 50), label="CPU", unit="%",
                          y_max=100))
    paths = svg.findall(f".//{SVG}path")
    assert [p.get("d").count("L") for p in paths] == [1, 1]
    assert len(svg.findall(f".//{SVG}circle")) == 1


def test_points_further_apart_than_the_gap_are_not_joined():
    points = _minutes(1, 2) + [(START + timedelta(hours=2), 3.0),
                               (START + timedelta(hours=2, minutes=1), 4.0)]
    joined = _svg(line_chart(points, label="Load", unit=""))
    split = _svg(line_chart(points, label="Load", unit="", gap=timedelta(minutes=5)))
    assert len(joined.findall(f".//{SVG}path")) == 1
    assert len(split.findall(f".//{SVG}path")) == 2


def test_values_are_placed_on_the_scale_and_higher_ones_stay_inside():
    svg = _svg(line_chart(_minutes(0, 50, 150), label="CPU", unit="%", y_max=100))
    coords = [tuple(map(float, c[1:].split(",")))
              for c in svg.find(f".//{SVG}path").get("d").split()]
    ys = [y for _, y in coords]
    assert ys[0] > ys[1] > ys[2]
    assert ys[2] == min(float(line.get("y1")) for line in svg.findall(f"{SVG}line"))
    xs = [x for x, _ in coords]
    assert xs == sorted(xs) and xs[1] - xs[0] == xs[2] - xs[1]


def test_the_scale_without_a_maximum_is_a_round_number_above_the_highest_value():
    markup = line_chart(_minutes(1200, 3400), label="Requests", unit="req/s")
    labels = [t.text for t in _svg(markup).findall(f"{SVG}text")]
    assert "5,000\u00a0req/s" in labels


def test_the_chart_is_named_and_summarised_for_screen_readers():
    markup = str(line_chart(_minutes(10, None, 30), label="Memory <used>", unit="%",
                            y_max=100))
    svg = _svg(markup)
    assert svg.get("role") == "img"
    title_id, desc_id = svg.get("aria-labelledby").split()
    assert svg.find(f"{SVG}title").get("id") == title_id
    desc = svg.find(f"{SVG}desc")
    assert desc.get("id") == desc_id
    assert desc.text == ("Memory <used>: last 30.0\u00a0%, lowest 10.0\u00a0%, average "
                         "20.0\u00a0%, highest 30.0\u00a0%, over 2 measurement(s), with 1 gap(s).")
    assert "Memory &lt;used&gt;" in markup and "<used>" not in markup
    assert re.search(r'<p class="visually-hidden">Memory &lt;used&gt;: last 30.0', markup)


def test_a_chart_without_values_says_so():
    markup = line_chart(_minutes(None, None), label="Disk", unit="%", y_max=100)
    svg = _svg(markup)
    assert svg.findall(f".//{SVG}path") == []
    assert "no data" in [t.text for t in svg.findall(f"{SVG}text")]
    assert svg.find(f"{SVG}desc").text == "Disk: no data in this range."


def test_the_time_range_given_frames_the_points():
    end = START + timedelta(hours=1)
    svg = _svg(line_chart([(START + timedelta(minutes=30), 5.0),
                           (START + timedelta(minutes=45), 5.0)],
                          label="Load", unit="", start=START, end=end))
    x0 = float(svg.find(f".//{SVG}path").get("d").split()[0][1:].split(",")[0])
    labels = [t.text for t in svg.findall(f"{SVG}text")]
    assert "12:00" in labels and "13:00" in labels
    left, right = (float(t.get("x")) for t in svg.findall(f"{SVG}text")[-2:])
    assert abs(x0 - (left + right) / 2) < 0.2


def test_throughput_is_written_in_binary_units():
    assert format_bytes_per_second(512) == "512.0\u00a0B/s"
    assert format_bytes_per_second(1536) == "1.5\u00a0KiB/s"
    assert format_bytes_per_second(3 * 1024 ** 3) == "3.0\u00a0GiB/s"
