"""Line charts drawn on the server as inline SVG: the pages need no chart library,
no script and nothing from a CDN, and a chart reads the same with scripts off.

A chart is one series of ``(time, value)`` points over a time range.  A ``None``
value is a gap (nothing was measured), drawn as a break in the line, never as zero;
two points further apart than ``gap`` are not joined either, so a node that was
silent for an hour shows a hole rather than a straight line across it.

Each chart names itself for assistive technology (``role="img"`` with a ``<title>``
and a ``<desc>``) and carries a visually hidden summary in words (last, lowest,
average and highest values, and the gaps), which is what a screen reader gives
instead of the drawing.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from markupsafe import Markup, escape

# Drawing area inside the view box (the SVG scales to its container's width).
_WIDTH, _HEIGHT = 600, 160
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 8, 22

Point = tuple[datetime, float | None]


def format_value(value: float, unit: str) -> str:
    """A figure as people read it: one decimal below 100, none above, the unit after."""
    number = f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{number}\u00a0{unit}" if unit else number


def format_bytes_per_second(value: float, unit: str = "B/s") -> str:
    """Throughput in B/s, KiB/s, MiB/s or GiB/s (a ``fmt`` for :func:`line_chart`;
    the values are bytes per second whatever ``unit`` says)."""
    for prefix in ("", "Ki", "Mi"):
        if abs(value) < 1024:
            return f"{value:,.1f}\u00a0{prefix}B/s"
        value /= 1024
    return f"{value:,.1f}\u00a0GiB/s"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= value)


def _segments(points: Sequence[tuple[datetime, float | None]],
              gap: timedelta | None) -> list[list[tuple[datetime, float]]]:
    """Runs of consecutive measured points, split at ``None`` and at long silences."""
    runs: list[list[tuple[datetime, float]]] = []
    current: list[tuple[datetime, float]] = []
    previous: datetime | None = None
    for moment, value in points:
        if value is None or (gap is not None and previous is not None
                             and moment - previous > gap):
            if current:
                runs.append(current)
            current = []
        if value is not None:
            current.append((moment, float(value)))
        previous = moment
    if current:
        runs.append(current)
    return runs


def _time_label(moment: datetime, span: timedelta) -> str:
    return moment.strftime("%H:%M" if span <= timedelta(days=2) else "%d %b")


def line_chart(points: Sequence[Point], *, label: str, unit: str,
               y_max: float | None = None, start: datetime | None = None,
               end: datetime | None = None, gap: timedelta | None = None,
               fmt: Callable[[float, str], str] = format_value) -> Markup:
    """An SVG line chart of ``points`` (oldest first), with its summary in words.

    :param points: ``(time, value)`` pairs; ``value`` None is a gap.
    :param label: what is measured ("CPU"), the chart's accessible name.
    :param unit: the values' unit ("%", "B/s"), given to ``fmt``.
    :param y_max: the top of the scale (100 for percentages); by default a round
        number at or above the highest value.  Higher values are drawn at the top.
    :param start, end: the time range shown (by default the points' first and last).
    :param gap: points further apart than this are not joined.
    :param fmt: how a value is written in the axis and the summary.
    """
    points = sorted(((_utc(t), v) for t, v in points), key=lambda p: p[0])
    values = [v for _, v in points if v is not None]
    first = _utc(start) if start else (points[0][0] if points else datetime.now(UTC))
    last = _utc(end) if end else (points[-1][0] if points else first)
    span = max(last - first, timedelta(seconds=1))
    top = y_max if y_max is not None else _nice_ceiling(max(values, default=0.0))
    top = top if top > 0 else 1.0
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def x(moment: datetime) -> float:
        return _LEFT + plot_w * min(max((moment - first) / span, 0.0), 1.0)

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - min(max(value / top, 0.0), 1.0))

    uid = "chart-" + secrets.token_hex(4)
    name = f"{label} ({unit})" if unit else label
    runs = _segments(points, gap)
    summary = _summary(label, unit, values, runs, fmt)

    parts = [f'<figure class="rpcc-chart mb-3" data-points="{len(values)}">',
             f'<figcaption class="small fw-semibold">{escape(name)}</figcaption>',
             f'<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" width="100%" role="img" '
             f'aria-labelledby="{uid}-title {uid}-desc">',
             f'<title id="{uid}-title">{escape(name)}, {escape(_time_label(first, span))} to '
             f'{escape(_time_label(last, span))} UTC</title>',
             f'<desc id="{uid}-desc">{escape(summary)}</desc>']
    for fraction in (0.0, 0.5, 1.0):
        level = _TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{level:.1f}" '
                     f'y2="{level:.1f}" stroke="currentColor" stroke-opacity="0.2"/>')
        parts.append(f'<text x="{_LEFT - 4}" y="{level + 4:.1f}" text-anchor="end" '
                     f'font-size="11" fill="currentColor">{escape(fmt(top * fraction, unit))}'
                     '</text>')
    for moment, anchor in ((first, "start"), (last, "end")):
        parts.append(f'<text x="{x(moment):.1f}" y="{_HEIGHT - 6}" text-anchor="{anchor}" '
                     f'font-size="11" fill="currentColor">'
                     f'{escape(_time_label(moment, span))}</text>')
    # The series takes the theme's primary colour through the class's CSS colour
    # (no inline style: the pages' Content-Security-Policy refuses it).
    parts.append('<g class="text-primary">')
    for run in runs:
        if len(run) == 1:
            moment, value = run[0]
            parts.append(f'<circle cx="{x(moment):.1f}" cy="{y(value):.1f}" r="2" '
                         'fill="currentColor"/>')
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}"
                        for i, (t, v) in enumerate(run))
        parts.append(f'<path d="{path}" fill="none" stroke="currentColor" stroke-width="1.5" '
                     'stroke-linejoin="round"/>')
    parts.append("</g>")
    if not values:
        parts.append(f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
                     'text-anchor="middle" font-size="13" fill="currentColor">no data</text>')
    parts.append("</svg>")
    parts.append(f'<p class="visually-hidden">{escape(summary)}</p></figure>')
    return Markup("".join(parts))


def _summary(label: str, unit: str, values: Sequence[float],
             runs: Sequence[Sequence[tuple[datetime, float]]],
             fmt: Callable[[float, str], str]) -> str:
    if not values:
        return f"{label}: no data in this range."
    text = (f"{label}: last {fmt(values[-1], unit)}, lowest {fmt(min(values), unit)}, "
            f"average {fmt(sum(values) / len(values), unit)}, "
            f"highest {fmt(max(values), unit)}, over {len(values)} measurement(s)")
    gaps = len(runs) - 1
    return text + (f", with {gaps} gap(s)." if gaps > 0 else ".")


def format_duration(seconds: float) -> str:
    """An uptime as people say it: "6 days, 19 h", "3 h 04 min", "12 min"."""
    minutes = int(seconds) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''}, {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min"
