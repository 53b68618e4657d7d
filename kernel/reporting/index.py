"""The fleet index: one self-contained HTML page linking every site's reports with its red flags."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

__all__ = ["render_index", "write_index"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d3557; }
h1 { font-size: 1.6rem; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #dee2e6; padding: .45rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f3f5; }
.verdict { font-weight: 700; text-transform: uppercase; padding: .1rem .5rem; border-radius: .3rem; }
.v-pass { background: #d8f3dc; color: #1b4332; }
.v-warn { background: #fff3bf; color: #7c5e00; }
.v-fail, .v-error { background: #ffc9c9; color: #7d1010; }
ul { margin: 0; padding-left: 1.1rem; }
.counts span { margin-right: 1rem; }
"""
_KIND_LABELS = {"monthly": "monthly audit", "drift": "drift", "verify": "snapshot verification"}


def _verdict(value: str) -> str:
    safe = html.escape(value)
    return f'<span class="verdict v-{safe}">{safe}</span>'


def render_index(summary: dict[str, Any]) -> str:
    """HTML of the index for a ``summary.json`` document (no script, no external resource)."""
    year_month = html.escape(str(summary.get("year_month", "")))
    rows: list[str] = []
    totals: dict[str, int] = {}
    for public_id, site in summary.get("sites", {}).items():
        verdict = str(site.get("verdict", "error"))
        reports = site.get("reports", {})
        if any(r.get("status") != "rendered" for r in reports.values()):
            verdict = "error" if verdict == "pass" else verdict
        totals[verdict] = totals.get(verdict, 0) + 1
        flags = "".join(
            f"<li><b>{html.escape(f['severity'])}</b> {html.escape(f['code'])}: {html.escape(f['message'])}</li>"
            for f in site.get("findings", [])
        )
        links = []
        for kind, outcome in sorted(reports.items()):
            label = html.escape(_KIND_LABELS.get(kind, kind))
            if outcome.get("status") == "rendered" and outcome.get("html"):
                href = html.escape(str(outcome["html"]), quote=True)
                links.append(f'<li><a href="{href}">{label}</a> {_verdict(str(outcome["verdict"]))}</li>')
            else:
                error = html.escape(str(outcome.get("error") or "failed"))
                kept = outcome.get("ipynb")
                notebook = f' (<a href="{html.escape(str(kept), quote=True)}">error notebook</a>)' if kept else ""
                links.append(f"<li>{label} {_verdict('error')} {error}{notebook}</li>")
        rows.append(
            "<tr>"
            f"<td><b>{html.escape(public_id)}</b><br><small>{html.escape(str(site.get('site_id', '')))}</small></td>"
            f"<td>{html.escape(str(site.get('name', '')))}<br><small>{html.escape(str(site.get('billing_mode', '')))}"
            "</small></td>"
            f"<td>{_verdict(verdict)}</td>"
            f"<td><ul>{flags or '<li>none</li>'}</ul></td>"
            f"<td><ul>{''.join(links) or '<li>not rendered</li>'}</ul></td>"
            "</tr>"
        )
    counts = "".join(f"<span>{_verdict(k)} {n}</span>" for k, n in sorted(totals.items()))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Fleet audit {year_month}</title><style>{_CSS}</style></head><body>"
        f"<h1>Fleet audit {year_month}</h1>"
        f'<p class="counts">{counts}</p>'
        "<table><thead><tr><th>site</th><th>name / mode</th><th>verdict</th><th>red flags</th>"
        "<th>reports</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></body></html>\n"
    )


def write_index(path: Path, summary: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_index(summary), encoding="utf-8")
    os.replace(tmp, path)
    return path
