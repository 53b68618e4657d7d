"""Charts for the audit notebooks as inline SVG: no JavaScript, no network, no plotting library.

A hand-written SVG keeps the notebook kernel light (no matplotlib import or font cache: the
report's cost stays close to bare papermill, see ``bench/bench_reports.py``) and is embedded in
the HTML report as markup, so it renders offline in any browser and is byte-for-byte
deterministic for the same data.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kernel.errors import KernelError

__all__ = [
    "Chart",
    "configure_display",
    "daily_volume_chart",
    "drift_chart",
    "quota_timeline_chart",
    "show",
    "stacked_daily_chart",
]

WIDTH_PX = 760
HEIGHT_PX = 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 170, 34, 44
_COLORS = {"accepted": "#2a9d8f", "overage": "#e9c46a", "rejected": "#e76f51", "non_billable": "#8d99ae"}
_INK = "#1d3557"
_GRID = "#dee2e6"


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    values: tuple[float | None, ...]
    dash: str = ""
    markers: bool = False


@dataclass(frozen=True)
class Chart:
    """An SVG chart, displayed as an ``<img>`` of the SVG in HTML plus the ``image/svg+xml`` itself.

    JupyterLab renders SVG output only in trusted notebooks (a freshly opened one is not), and
    otherwise falls back to the text. HTML output is rendered sanitised in any notebook and keeps
    an image whose source is a ``data:`` URI (an SVG loaded as an image runs no script), so the
    chart shows when the committed notebook is opened, in the offline report and in nbviewer.
    """

    title: str
    svg: str = field(repr=False)

    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg.encode("utf-8")).decode("ascii")

    def html(self) -> str:
        alt = html.escape(self.title, quote=True)
        return f'<img src="{self.data_uri()}" alt="{alt}" width="{WIDTH_PX}" style="max-width:100%;height:auto">'

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self.html(), "image/svg+xml": self.svg, "text/plain": f"[chart] {self.title}"}


# At most this many grid intervals on the value axis.
MAX_TICK_INTERVALS = 6


def _nice_steps() -> Iterator[int]:
    """1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, …: whole-number steps only."""
    yield from (1, 2, 5)
    exponent = 1
    while True:
        for step in (1, 2, 2.5, 5):
            yield int(step * 10**exponent)
        exponent += 1


def _axis(low: float, high: float) -> tuple[float, float, list[int]]:
    """(bottom, top, ticks): whole-number ticks, every value of the data inside (events are counts)."""
    low, high = min(low, 0.0), max(high, 1.0)
    for step in _nice_steps():
        bottom, top = math.floor(low / step) * step, math.ceil(high / step) * step
        if (top - bottom) / step <= MAX_TICK_INTERVALS:
            count = int((top - bottom) // step)
            return float(bottom), float(top), [int(bottom + step * k) for k in range(count + 1)]
    raise AssertionError("unreachable: the steps grow without bound")


def _render(
    title: str,
    categories: Sequence[str],
    *,
    bars: Sequence[Series] = (),
    lines: Sequence[Series] = (),
    hlines: Sequence[tuple[str, str, float, str]] = (),
    x_label: str = "",
    y_label: str = "",
    note: str = "",
) -> Chart:
    n = max(len(categories), 1)
    plot_w, plot_h = WIDTH_PX - _LEFT - _RIGHT, HEIGHT_PX - _TOP - _BOTTOM
    stacked = [sum(float(s.values[i] or 0) for s in bars) for i in range(len(categories))]
    points = [float(v) for s in lines for v in s.values if v is not None] + [h[2] for h in hlines]
    bottom, top, ticks = _axis(min([*points, 0.0]), max([*stacked, *points, 0.0]))

    def y(value: float) -> float:
        return _TOP + plot_h * (top - value) / (top - bottom)

    def x(index: int) -> float:
        return _LEFT + plot_w * (index + 0.5) / n

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" '
        f'viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif" font-size="11" role="img" '
        f'aria-label="{html.escape(title, quote=True)}">',
        f'<rect width="{WIDTH_PX}" height="{HEIGHT_PX}" fill="#ffffff"/>',
        f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold" fill="{_INK}">{html.escape(title)}</text>',
    ]
    for tick in ticks:
        gy = y(tick)
        out.append(f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="{_GRID}"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" fill="{_INK}">{tick:,}</text>')
    step = max(1, math.ceil(n / 16))
    for i, name in enumerate(categories):
        if i % step == 0:
            out.append(
                f'<text x="{x(i):.1f}" y="{_TOP + plot_h + 14}" text-anchor="middle" fill="{_INK}">'
                f"{html.escape(name)}</text>"
            )
    band = plot_w / n * 0.8
    base = [0.0] * len(categories)
    for series in bars:
        for i, raw in enumerate(series.values):
            value = float(raw or 0)
            if value <= 0:
                continue
            y0, y1 = y(base[i]), y(base[i] + value)
            out.append(
                f'<rect x="{x(i) - band / 2:.1f}" y="{y1:.1f}" width="{band:.1f}" height="{y0 - y1:.1f}" '
                f'fill="{series.color}"/>'
            )
            base[i] += value
    for _name, color, value, dash in hlines:
        hy = y(value)
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{hy:.1f}" y2="{hy:.1f}" stroke="{color}" '
            f'stroke-width="1.5" stroke-dasharray="{dash}"/>'
        )
    for series in lines:
        coords = [f"{x(i):.1f},{y(float(v)):.1f}" for i, v in enumerate(series.values) if v is not None]
        if coords:
            out.append(
                f'<polyline points="{" ".join(coords)}" fill="none" stroke="{series.color}" stroke-width="2" '
                f'stroke-dasharray="{series.dash}"/>'
            )
        if series.markers:
            out.extend(
                f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="3" fill="{series.color}"/>' for c in coords
            )
    out.append(
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="{_INK}" '
        'stroke-width="0.8"/>'
    )
    legend = [(s.label, s.color, "") for s in (*bars, *lines)] + [(h[0], h[1], h[3]) for h in hlines]
    for k, (label, color, dash) in enumerate(legend):
        ly = _TOP + 8 + k * 18
        lx = _LEFT + plot_w + 14
        out.append(
            f'<line x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="6" '
            f'stroke-dasharray="{dash}"/>'
        )
        out.append(f'<text x="{lx + 24}" y="{ly + 4}" fill="{_INK}">{html.escape(label)}</text>')
    if x_label:
        out.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{HEIGHT_PX - 8}" text-anchor="middle" fill="{_INK}">'
            f"{html.escape(x_label)}</text>"
        )
    if y_label:
        out.append(
            f'<text x="14" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" fill="{_INK}" '
            f'transform="rotate(-90 14 {_TOP + plot_h / 2:.1f})">{html.escape(y_label)}</text>'
        )
    if note:
        out.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" fill="{_INK}">'
            f"{html.escape(note)}</text>"
        )
    out.append("</svg>")
    return Chart(title, "".join(out))


def _ints(column: pd.Series[Any]) -> tuple[float | None, ...]:
    return tuple(None if pd.isna(v) else float(v) for v in column)


def daily_volume_chart(daily: pd.DataFrame, *, title: str = "Daily volume (UTC)") -> Chart:
    """Stacked bars per day: accepted, overage, rejected, non-billable."""
    return stacked_daily_chart(daily, {name: name.replace("_", "-") for name in _COLORS}, title=title)


def stacked_daily_chart(daily: pd.DataFrame, columns: dict[str, str], *, title: str) -> Chart:
    """Stacked bars per day of ``daily`` (a ``day`` column, ``YYYY-MM-DD``), one bar part per column.

    ``columns`` maps a column to its legend label; the colours are the audit's (``billable``
    takes the accepted colour), so the dispute packet's report looks like the monthly audit.
    """
    palette = {**_COLORS, "billable": _COLORS["accepted"]}
    bars = [Series(label, palette.get(name, _INK), _ints(daily[name])) for name, label in columns.items()]
    days = [str(d)[8:10] for d in daily["day"]]
    note = "" if len(daily) else "no rows"
    return _render(title, days, bars=bars, x_label="day of month", y_label="events", note=note)


def quota_timeline_chart(timeline: pd.DataFrame, *, title: str = "Quota timeline") -> Chart:
    """Cumulative billable (and rejected) events against the monthly limit and the hard cap."""
    days = [str(d)[8:10] for d in timeline["day"]]
    lines = [
        Series("billable (cumulative)", "#264653", _ints(timeline["cumulative_billable"])),
        Series("rejected (cumulative)", _COLORS["rejected"], _ints(timeline["cumulative_rejected"])),
    ]
    hlines: list[tuple[str, str, float, str]] = []
    if len(timeline):
        hlines.append(("monthly limit", "#e9c46a", float(timeline["monthly_limit"].iloc[0]), "6 3"))
        hlines.append(("hard cap", "#e76f51", float(timeline["hard_cap"].iloc[0]), "2 3"))
    return _render(title, days, lines=lines, hlines=hlines, x_label="day of month", y_label="events")


def drift_chart(drift: pd.DataFrame, *, title: str = "Reconciliation drift") -> Chart:
    """Counter and Redis drift (value before correction) per reconcile run."""
    runs = [str(i) for i in range(1, len(drift) + 1)]
    lines = []
    if len(drift):
        lines.append(Series("counter - ledger", "#e76f51", _ints(drift["counter_drift"]), markers=True))
        redis = pd.to_numeric(drift["redis_drift"], errors="coerce")
        if redis.notna().any():
            lines.append(Series("redis - ledger", "#264653", _ints(redis), dash="4 2", markers=True))
    note = "" if len(drift) else "no reconcile runs logged"
    return _render(
        title,
        runs,
        lines=lines,
        hlines=[("zero", "#adb5bd", 0.0, "")],
        x_label="reconcile run",
        y_label="drift",
        note=note,
    )


# Table display in notebooks: whole finding messages and hashes, bounded row counts.
DISPLAY_MAX_COLWIDTH = 200
DISPLAY_MAX_ROWS = 60


def configure_display() -> None:
    """Display settings of an audit notebook: pandas options, and the kernel's errors as one line.

    pandas shows whole finding messages and at most DISPLAY_MAX_ROWS rows; a ``KernelError`` raised
    in a cell (a bad month, an unknown site, a write on the read-only connection) prints
    ``error: … [code]`` instead of a traceback, as the CLI does. The cell still fails.
    """
    pd.set_option("display.max_colwidth", DISPLAY_MAX_COLWIDTH)
    pd.set_option("display.max_rows", DISPLAY_MAX_ROWS)
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((KernelError,), _one_line_error)


def _one_line_error(shell: Any, etype: Any, value: BaseException, tb: Any, tb_offset: Any = None) -> list[str]:
    import sys

    line = f"error: {value.message} [{value.code}]" if isinstance(value, KernelError) else str(value)
    print(line, file=sys.stderr)
    return [line]


def show(chart: Chart) -> None:
    """Display ``chart`` inline (see ``Chart``: HTML image plus SVG, text for terminals)."""
    from IPython.display import display

    display(chart)  # type: ignore[no-untyped-call]
