"""What an audit notebook shows a finance analyst: a verdict banner, the month's figures, findings
coloured by severity with what each means and what to do, and tables that say when they are cut.

Every block is HTML with inline styles (no script, no stylesheet, nothing from the network), so it
looks the same in JupyterLab, where untrusted output is sanitised, and in the offline HTML report.
One palette for everything, shared with ``kernel.audit.charts``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kernel.audit.findings import Finding, Severity, Verdict

__all__ = [
    "FINDING_GUIDE",
    "PALETTE",
    "VERDICT_WORDS",
    "Block",
    "banner",
    "figures_block",
    "findings_block",
    "guide_of",
    "table",
    "verification_banner",
]

# One palette for banners, findings, index and charts (background, ink).
PALETTE: dict[str, tuple[str, str]] = {
    "pass": ("#d8f3dc", "#1b4332"),
    "warn": ("#fff3bf", "#7c5e00"),
    "fail": ("#ffc9c9", "#7d1010"),
    "error": ("#ffc9c9", "#7d1010"),
    "no_activity": ("#e9ecef", "#343a40"),
    "info": ("#e7f1ff", "#1d3557"),
}
VERDICT_WORDS = {
    "pass": "PASS",
    "warn": "WARN",
    "fail": "FAIL",
    "error": "ERROR",
    "no_activity": "NO ACTIVITY",
}
_VERDICT_SENTENCES = {
    "pass": "Nothing needs your attention: the invoice matches the ledger.",
    "warn": "The invoice is sound, but something below needs a look.",
    "fail": "A billing rule is broken: do not send this invoice before the red findings are resolved.",
    "no_activity": "No event was recorded this month: there is nothing to invoice and nothing to judge.",
}
_FONT = "font-family: system-ui, -apple-system, 'Segoe UI', sans-serif"

# code -> (what it means, what to do), in words a finance analyst uses.
FINDING_GUIDE: dict[str, tuple[str, str]] = {
    "counter_mismatch": (
        "The live usage counter disagrees with the ledger. The invoice comes from the ledger, so "
        "the amount is right, but quota decisions this month used a wrong count.",
        "Run reconcile (revkernel cron run reconcile-usage) and ask engineering why the counter drifted.",
    ),
    "counter_breakdown_mismatch": (
        "The counter's overage/rejected/non-billable split differs from the ledger's.",
        "Reconcile corrects it; no invoice change is needed.",
    ),
    "counter_missing": (
        "Billable events exist but no usage counter was kept for the month.",
        "Run reconcile; escalate to engineering: the ledger write and the counter are one transaction.",
    ),
    "quota_limit_exceeded": (
        "More events were accepted within quota than the plan's limit allows.",
        "Escalate to engineering before invoicing: quota enforcement failed.",
    ),
    "hard_cap_exceeded": (
        "More events were billed than the plan's hard cap allows.",
        "Do not invoice the excess; escalate to engineering.",
    ),
    "quota_rejections": (
        "Events past the hard cap were refused and never billed.",
        "Nothing to do; consider offering the customer a larger plan.",
    ),
    "retry_storm": (
        "After being told the quota was used up, the customer's client kept re-sending instead of "
        "waiting. Nothing was billed twice, but the traffic is wasted.",
        "Tell the customer their tracker ignores Retry-After; no invoice change is needed.",
    ),
    "non_billable_flood": (
        "Most of the month's events were non-billable (scroll depth, system events).",
        "Check the customer's tracker configuration; nothing is billed for these events.",
    ),
    "volume_spike": (
        "One day had far more events than a usual day.",
        "Check with the customer that the spike is real traffic before invoicing it.",
    ),
    "duplicates_blocked": (
        "Re-sent events were recognised and billed once.",
        "Nothing to do: this is idempotency working.",
    ),
    "snapshot_missing": (
        "The month is over but no invoice snapshot was frozen.",
        "Run the freeze (revkernel cron run invoice-freeze --year-month …) before invoicing.",
    ),
    "month_open": ("The month is still running: no invoice snapshot yet.", "Nothing to do until it ends."),
    "snapshot_verified": (
        "The signed invoice snapshot was recomputed from the ledger and matches.",
        "Nothing to do: this invoice can be defended.",
    ),
    "no_activity": ("No event was recorded this month.", "Nothing to invoice."),
    "counter_drift_logged": (
        "Reconcile found the counter off and corrected it.",
        "Usually harmless; repeated drift is worth an engineering look.",
    ),
    "redis_drift_logged": (
        "The Redis mirror of the counter drifted and was corrected. Redis is never used for billing.",
        "Nothing to do.",
    ),
    "accepted_without_outbox": (
        "Accepted events have no outbox row, so they were never published downstream.",
        "Escalate to engineering: ledger and outbox are written in one transaction.",
    ),
    "outbox_without_ledger": (
        "Events were published that are not in the ledger (phantom usage).",
        "Escalate at once: this is a rollback condition (runbook §6).",
    ),
    "unpublished_outbox": (
        "Some accepted events were not delivered downstream within an hour.",
        "Check the outbox relay and its sink; the invoice itself is unaffected.",
    ),
    "outbox_not_relayed": (
        "No sink is configured, so the outbox table itself is the queue.",
        "Nothing to do unless a downstream system should receive events.",
    ),
}
_SNAPSHOT_PROBLEM = (
    "The signed invoice snapshot does not match what the ledger holds now.",
    "Do not send the invoice; escalate to engineering and keep the evidence as it is.",
)
_SEVERITY_WORDS = {"fail": "FAIL", "warn": "WARN", "info": "info"}
_RANK = {"fail": 0, "warn": 1, "info": 2}


def guide_of(code: str) -> tuple[str, str]:
    """(what it means, what to do) for a finding code; snapshot problems share one guide."""
    return FINDING_GUIDE.get(code, _SNAPSHOT_PROBLEM)


@dataclass(frozen=True)
class Block:
    """A piece of report: HTML for JupyterLab and the HTML report, text for a terminal."""

    html: str
    text: str

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


def _pill(kind: str, word: str) -> str:
    background, ink = PALETTE.get(kind, PALETTE["info"])
    return (
        f'<span style="background:{background};color:{ink};font-weight:700;padding:.1rem .45rem;'
        f'border-radius:.3rem;white-space:nowrap">{html.escape(word)}</span>'
    )


def banner(
    *,
    title: str,
    subtitle: str,
    verdict: str,
    findings: Iterable[Finding],
    sentence: str | None = None,
    word: str | None = None,
) -> Block:
    """The verdict first, big and coloured, with the red flags (warn and fail findings) under it.

    ``verdict`` picks the colour (pass, warn, fail, error, no_activity); ``word`` replaces its word.
    """
    flags = sorted((f for f in findings if f.is_red_flag), key=lambda f: (_RANK[f.severity.value], f.code))
    background, ink = PALETTE.get(verdict, PALETTE["info"])
    word = word or VERDICT_WORDS.get(verdict, verdict.upper())
    lead = sentence or _VERDICT_SENTENCES.get(verdict, "")
    items = "".join(
        f'<li style="margin:.2rem 0">{_pill(f.severity.value, _SEVERITY_WORDS[f.severity.value])} '
        f"<b>{html.escape(f.code)}</b>: {html.escape(f.message)}</li>"
        for f in flags
    )
    flag_html = f'<ul style="margin:.5rem 0 0;padding-left:1.2rem">{items}</ul>' if flags else ""
    markup = (
        f'<div style="{_FONT};background:{background};color:{ink};border-left:.5rem solid {ink};'
        "padding:.8rem 1rem;border-radius:.4rem;margin:.3rem 0 1rem;max-width:100%;box-sizing:border-box;"
        'overflow-wrap:anywhere">'
        f'<div style="font-size:.9rem;opacity:.85">{html.escape(subtitle)}</div>'
        f'<div style="font-size:1.6rem;font-weight:800;margin:.1rem 0">{html.escape(word)} · {html.escape(title)}</div>'
        f"<div>{html.escape(lead)}</div>{flag_html}</div>"
    )
    text_flags = "".join(f"\n  {f.severity.value.upper()} {f.code}: {f.message}" for f in flags)
    return Block(markup, f"{word} · {title} ({subtitle}): {lead}{text_flags}")


def figures_block(figures: Mapping[str, Any]) -> Block:
    """The month's key figures as a row of labelled numbers."""
    cells = "".join(
        '<div style="padding:.5rem .9rem;border:1px solid #dee2e6;border-radius:.4rem;min-width:7rem">'
        f'<div style="font-size:.8rem;color:#495057">{html.escape(label)}</div>'
        '<div style="font-size:1.25rem;font-weight:700;color:#1d3557;overflow-wrap:anywhere">'
        f"{html.escape(str(value))}</div></div>"
        for label, value in figures.items()
    )
    markup = f'<div style="{_FONT};display:flex;flex-wrap:wrap;gap:.5rem;margin:.3rem 0 1rem">{cells}</div>'
    return Block(markup, "\n".join(f"{label}: {value}" for label, value in figures.items()))


def findings_block(findings: Iterable[Finding]) -> Block:
    """Every finding, worst first, coloured by severity, with what it means and what to do."""
    found = sorted(findings, key=lambda f: (_RANK[f.severity.value], f.code))
    if not found:
        return Block(f'<p style="{_FONT}">No findings.</p>', "No findings.")
    rows = []
    for f in found:
        meaning, action = guide_of(f.code)
        background, _ = PALETTE[f.severity.value]
        pill = _pill(f.severity.value, _SEVERITY_WORDS[f.severity.value])
        rows.append(
            f'<tr style="background:{background}">'
            f'<td style="padding:.35rem .5rem;vertical-align:top;text-align:left">{pill}</td>'
            f'<td style="padding:.35rem .5rem;vertical-align:top;text-align:left"><b>{html.escape(f.code)}</b><br>'
            f"{html.escape(f.message)}</td>"
            f'<td style="padding:.35rem .5rem;vertical-align:top;text-align:left">{html.escape(meaning)}</td>'
            f'<td style="padding:.35rem .5rem;vertical-align:top;text-align:left">{html.escape(action)}</td></tr>'
        )
    head = "".join(
        f'<th style="text-align:left;padding:.35rem .5rem;background:#f1f3f5;white-space:nowrap">{h}</th>'
        for h in ("severity", "finding", "what it means", "what to do")
    )
    markup = (
        f'<table style="{_FONT};border-collapse:collapse;width:100%;table-layout:auto">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    text = "\n".join(f"{f.severity.value.upper():<4} {f.code}: {f.message} — {guide_of(f.code)[1]}" for f in found)
    return Block(markup, text)


def table(frame: pd.DataFrame, *, total_rows: int | None = None, empty: str = "No rows.") -> Block:
    """A DataFrame as an HTML table without the pandas index; says how many rows it hid.

    Args:
        frame: The rows to show (already limited by the query).
        total_rows: How many rows exist in all; more than ``len(frame)`` means the table is cut.
        empty: What to say when there is no row at all.
    """
    total = len(frame) if total_rows is None else int(total_rows)
    if total == 0:
        return Block(f'<p style="{_FONT}">{html.escape(empty)}</p>', empty)
    body = frame.to_html(index=False, border=0, escape=True, na_rep="-")
    note = ""
    text_note = ""
    if total > len(frame):
        hidden = total - len(frame)
        note = (
            f'<p style="{_FONT};color:#7c5e00;margin:.3rem 0">Showing the first {len(frame):,} of {total:,} rows: '
            f"{hidden:,} more not shown.</p>"
        )
        text_note = f"\n(showing the first {len(frame):,} of {total:,} rows: {hidden:,} more not shown)"
    markup = f'<div style="max-width:100%;overflow-x:auto">{body}</div>{note}'
    return Block(markup, frame.to_string(index=False) + text_note)


def verdict_word(verdict: Verdict | str) -> str:
    return VERDICT_WORDS.get(str(verdict), str(verdict).upper())


def severity_order(severity: Severity) -> int:
    return _RANK[severity.value]


_VERIFICATION = {
    # verifier verdict -> (colour, word, sentence)
    "pass": ("pass", "PASS", "Every check passed: the CSV is exactly the invoice snapshot signed by our pinned key."),
    "unpinned": (
        "warn",
        "KEY NOT PINNED",
        "Every check passed, but only against the key the packet carries: pin our published public key "
        "(trusted_keys) to know who signed it.",
    ),
    "fail": ("fail", "FAIL", "A check failed: this evidence does not prove the invoice (see the checks below)."),
}


def verification_banner(manifest: Mapping[str, Any], verdict: str) -> Block:
    """The dispute report's banner from the offline verifier's verdict (pass, unpinned or fail)."""
    colour, word, sentence = _VERIFICATION.get(verdict, _VERIFICATION["fail"])
    return banner(
        title=f"{manifest.get('public_id', '')} {manifest['year_month']}",
        subtitle=f"Dispute evidence · site {manifest['site_id']}",
        verdict=colour,
        word=word,
        findings=[],
        sentence=sentence,
    )
