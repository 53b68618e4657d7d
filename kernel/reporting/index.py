"""The fleet index: one self-contained HTML page for a month, every site with its figures and links.

What a finance team expects of a fleet overview: the month's verdicts and totals first, then one
row per site with its verdict, billable/overage/rejected/non-billable figures, the change in
billable events against the previous month, snapshot and drift status, red flags, and links to
the site's monthly audit, drift and snapshot verification reports; links to the previous and
next month's index. The table is plain HTML in a stable order, so it works with JavaScript off;
a small inline script (nothing is loaded from the network) adds sorting by any column and a
filter box.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernel.audit.display import PALETTE, VERDICT_WORDS, guide_of
from kernel.months import month_bounds, previous_year_month

__all__ = ["KIND_LABELS", "adjacent_months", "render_index", "write_index"]

KIND_LABELS = {"monthly": "monthly audit", "drift": "drift", "verify": "snapshot verification"}
_VERDICT_ORDER = {"fail": 0, "error": 1, "warn": 2, "pass": 3, "no_activity": 4}
_FIGURES = (
    ("billable", "billable_count"),
    ("overage", "overage_count"),
    ("rejected", "rejected_count"),
    ("non-billable", "non_billable_count"),
    ("duplicates", "dedup_count"),
)

_CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5rem; color: #1d3557;
       overflow-wrap: anywhere; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
nav { margin: .2rem 0 1rem; font-size: .95rem; }
nav > span { margin-right: 1.4rem; }
.banner { padding: .8rem 1rem; border-radius: .4rem; margin-bottom: 1rem; border-left: .5rem solid; }
.pill { font-weight: 700; padding: .1rem .45rem; border-radius: .3rem; white-space: nowrap; }
.totals span { margin-right: 1.2rem; }
.wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: .88rem; }
th, td { border-bottom: 1px solid #dee2e6; padding: .4rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f5; position: sticky; top: 0; white-space: nowrap; overflow-wrap: normal; }
td:first-child { min-width: 12rem; }
td.word { white-space: nowrap; overflow-wrap: normal; }
th[data-sortable] { cursor: pointer; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tfoot td { font-weight: 700; background: #f8f9fa; border-top: 2px solid #adb5bd; }
ul { margin: 0; padding-left: 1.1rem; }
small { color: #495057; }
.up { color: #1b4332; } .down { color: #7d1010; }
#filter { margin: 0 0 .6rem; padding: .35rem .5rem; width: 22rem; max-width: 100%; }
"""

# Sorting and filtering, inline (the page must open offline): without JavaScript the table
# simply stays in its server-rendered order with every row shown.
_SCRIPT = """
(function () {
  var table = document.getElementById('sites');
  if (!table) { return; }
  var body = table.tBodies[0];
  var box = document.createElement('input');
  box.id = 'filter'; box.type = 'search';
  box.placeholder = 'Filter sites, verdicts, red flags…';
  box.setAttribute('aria-label', 'Filter the sites');
  table.parentNode.parentNode.insertBefore(box, table.parentNode);
  box.addEventListener('input', function () {
    var needle = box.value.toLowerCase();
    Array.prototype.forEach.call(body.rows, function (row) {
      row.hidden = needle !== '' && row.textContent.toLowerCase().indexOf(needle) < 0;
    });
  });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    if (!th.hasAttribute('data-sortable')) { return; }
    th.tabIndex = 0;
    var sort = function () {
      var ascending = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
      var numeric = th.classList.contains('num') || th.hasAttribute('data-numeric');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].getAttribute('data-sort'), y = b.cells[column].getAttribute('data-sort');
        var order = numeric ? (parseFloat(x) - parseFloat(y)) : x.localeCompare(y);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    };
    th.addEventListener('click', sort);
    th.addEventListener('keydown', function (e) { if (e.key === 'Enter') { sort(); } });
  });
})();
"""


def _pill(verdict: str) -> str:
    background, ink = PALETTE.get(verdict, PALETTE["error"])
    word = VERDICT_WORDS.get(verdict, verdict.upper())
    return f'<span class="pill" style="background:{background};color:{ink}">{html.escape(word)}</span>'


def _site_verdict(site: Mapping[str, Any]) -> str:
    verdict = str(site.get("verdict", "error"))
    reports = site.get("reports", {})
    if any(r.get("status") != "rendered" for r in reports.values()) and verdict in ("pass", "no_activity"):
        return "error"
    return verdict


def _change(current: int | None, previous: int | None) -> tuple[str, float]:
    """(cell text, sort key) of the month-over-month change of billable events."""
    if current is None or previous is None:
        return "new", float("-inf")
    delta = current - previous
    if previous == 0:
        return ("+0" if delta == 0 else f"+{delta:,} (new)"), float(delta)
    percent = delta * 100 / previous
    arrow = "up" if delta > 0 else ("down" if delta < 0 else "")
    text = f"{delta:+,} ({percent:+.0f}%)"
    return (f'<span class="{arrow}">{text}</span>' if arrow else text), float(delta)


def adjacent_months(year_month: str) -> tuple[str, str]:
    """(previous, next) ``YYYY-MM`` of a month."""
    start, end = month_bounds(year_month)
    return previous_year_month(start), end.strftime("%Y-%m")


def _month_link(out_dir: Path | None, year_month: str, label: str) -> str:
    href = f"../{year_month}/index.html"
    exists = out_dir is not None and (out_dir.parent / year_month / "index.html").exists()
    note = "" if exists else " <small>(not rendered yet)</small>"
    return f'<span><a href="{html.escape(href, quote=True)}">{html.escape(label)}</a>{note}</span>'


def _num(value: int | None) -> str:
    shown = "-" if value is None else f"{value:,}"
    key = "-1" if value is None else str(value)
    return f'<td class="num" data-sort="{key}">{shown}</td>'


def render_index(summary: dict[str, Any], *, out_dir: Path | None = None) -> str:
    """HTML of the index for a ``summary.json`` document (inline CSS and script, nothing external).

    Args:
        summary: The month's summary (``kernel.reporting.fleet`` writes it).
        out_dir: The month's directory, to tell which neighbouring months have an index yet.
    """
    year_month = str(summary.get("year_month", ""))
    sites: dict[str, Any] = summary.get("sites", {})
    rows: list[str] = []
    counts: dict[str, int] = {}
    totals = {key: 0 for _, key in _FIGURES}
    totals_prev = 0
    has_prev = False
    for public_id, site in sites.items():
        verdict = _site_verdict(site)
        counts[verdict] = counts.get(verdict, 0) + 1
        figures: dict[str, Any] = site.get("figures", {})
        cells = []
        for _, key in _FIGURES:
            value = figures.get(key)
            totals[key] += int(value or 0)
            cells.append(_num(None if value is None else int(value)))
        billable = figures.get("billable_count")
        previous = figures.get("previous_billable_count")
        if previous is not None:
            has_prev = True
            totals_prev += int(previous)
        change, change_key = _change(
            None if billable is None else int(billable), None if previous is None else int(previous)
        )
        flags = "".join(
            f'<li title="{html.escape(guide_of(f["code"])[1], quote=True)}"><b>{html.escape(f["code"])}</b>: '
            f"{html.escape(f['message'])}</li>"
            for f in site.get("findings", [])
        )
        links = []
        reports = site.get("reports", {})
        for kind, label in KIND_LABELS.items():
            outcome = reports.get(kind)
            if outcome is None:
                links.append(f"<li>{html.escape(label)} <small>(not rendered)</small></li>")
            elif outcome.get("status") == "rendered" and outcome.get("html"):
                href = html.escape(str(outcome["html"]), quote=True)
                links.append(f'<li><a href="{href}">{html.escape(label)}</a> {_pill(str(outcome["verdict"]))}</li>')
            else:
                error = html.escape(str(outcome.get("error") or "failed"))
                kept = outcome.get("ipynb")
                notebook = f' (<a href="{html.escape(str(kept), quote=True)}">error notebook</a>)' if kept else ""
                links.append(f"<li>{html.escape(label)} {_pill('error')} {error}{notebook}</li>")
        snapshot = str(figures.get("snapshot", "-"))
        drift = figures.get("drift_checks")
        rows.append(
            "<tr>"
            f'<td data-sort="{html.escape(public_id, quote=True)}"><b>{html.escape(public_id)}</b><br>'
            f"{html.escape(str(site.get('name', '')))} <small>({html.escape(str(site.get('billing_mode', '')))})"
            f"</small><br><small>{html.escape(str(site.get('site_id', '')))}</small></td>"
            f'<td data-sort="{_VERDICT_ORDER.get(verdict, 9)}">{_pill(verdict)}</td>'
            + "".join(cells[:1])
            + f'<td class="num" data-sort="{change_key}">{change}</td>'
            + "".join(cells[1:])
            + f'<td class="word" data-sort="{html.escape(snapshot, quote=True)}">{html.escape(snapshot)}</td>'
            + _num(None if drift is None else int(drift))
            + f'<td data-sort="{len(site.get("findings", []))}"><ul>{flags or "<li>none</li>"}</ul></td>'
            f'<td data-sort="{html.escape(public_id, quote=True)}"><ul>{"".join(links)}</ul></td>'
            "</tr>"
        )
    total_change, _ = _change(totals["billable_count"], totals_prev if has_prev else None)
    foot = (
        f"<tr><td>Total: {len(sites):,} site(s)</td><td></td>"
        f'<td class="num">{totals["billable_count"]:,}</td><td class="num">{total_change}</td>'
        + "".join(f'<td class="num">{totals[key]:,}</td>' for _, key in _FIGURES[1:])
        + "<td></td><td></td><td></td><td></td></tr>"
    )
    worst = min(counts, key=lambda v: _VERDICT_ORDER.get(v, 9)) if counts else "no_activity"
    background, ink = PALETTE.get(worst, PALETTE["error"])
    verdict_counts = "".join(
        f"<span>{_pill(v)} {n:,}</span>" for v, n in sorted(counts.items(), key=lambda kv: _VERDICT_ORDER.get(kv[0], 9))
    )
    red = [pid for pid, s in sites.items() if _site_verdict(s) in ("fail", "error", "warn")]
    lead = (
        f"{len(red):,} of {len(sites):,} site(s) need a look: {', '.join(red)}."
        if red
        else f"All {len(sites):,} site(s) pass or had no activity."
    )
    previous, following = adjacent_months(year_month) if year_month else ("", "")
    nav = (
        f"<nav>{_month_link(out_dir, previous, '← ' + previous)}"
        f"{_month_link(out_dir, following, following + ' →')}"
        '<span>summary: <a href="summary.json">summary.json</a></span></nav>'
        if year_month
        else ""
    )
    # kind: "" text, "num" a right-aligned number, "rank" sorted by number but shown as text.
    attributes = {"": "", "num": " class=num", "rank": " data-numeric"}
    head = "".join(
        f"<th data-sortable{attributes[kind]}>{html.escape(label)}</th>"
        for label, kind in [
            ("site", ""),
            ("verdict", "rank"),
            ("billable", "num"),
            ("vs previous month", "num"),
            *[(label, "num") for label, _ in _FIGURES[1:]],
            ("snapshot", ""),
            ("drift runs", "num"),
            ("red flags", "rank"),
        ]
    )
    title = html.escape(f"Fleet audit {year_month}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_CSS}</style></head><body>"
        f"<h1>{title}</h1>{nav}"
        f'<div class="banner" style="background:{background};color:{ink};border-color:{ink}">'
        f'<div class="totals">{verdict_counts}</div><div style="margin-top:.4rem">{html.escape(lead)}</div>'
        f'<div style="margin-top:.3rem">{totals["billable_count"]:,} billable events this month'
        f" ({totals['overage_count']:,} overage), {totals['rejected_count']:,} rejected, "
        f"{totals['non_billable_count']:,} non-billable.</div></div>"
        f'<div class="wrap"><table id="sites"><thead><tr>{head}<th>reports</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody><tfoot>{foot}</tfoot></table></div>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_index(path: Path, summary: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_index(summary, out_dir=path.parent), encoding="utf-8")
    os.replace(tmp, path)
    return path
