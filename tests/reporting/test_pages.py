"""The fleet index and a site report in real headless Chromium, offline: they fit a 1400 px window,
the index sorts and filters with JavaScript and still shows everything without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.db.connect import Database
from kernel.reporting import render_notebook, run_fleet_report
from kernel.reporting.browser import open_page
from kernel.reporting.fleet import NOTEBOOKS_DIR

WINDOW_PX = 1400
ROW_IDS = (
    "Array.from(document.querySelectorAll('#sites tbody tr')).filter(r => !r.hidden).map(r => r.cells[0].dataset.sort)"
)


@pytest.fixture
def rendered(sample_db: Database, tmp_path: Path, chromium: str) -> Path:
    for kind in ("monthly", "drift", "verify"):
        report = run_fleet_report(
            kind=kind,
            year_month="2026-10",
            database_url=sample_db.uri("analyst"),
            out_root=tmp_path,
            sites=["demo-hardcap"] if kind != "monthly" else ["demo-hardcap", "demo-overage"],
            workers=2,
            progress=False,
            timeout_s=120,
        )
        assert not report.failed
    # The dispute packet's report.html is this notebook, rendered the same way.
    with sample_db.connect("owner", autocommit=True) as conn:
        row = conn.execute("SELECT public_key FROM signing_keys ORDER BY created_at LIMIT 1").fetchone()
    assert row is not None
    packet = render_notebook(
        NOTEBOOKS_DIR / "dispute_evidence.ipynb",
        {
            "site": "demo-overage",
            "year_month": "2026-10",
            "disputed_keys": "",
            "trusted_keys": str(row[0]),  # pinned, as a customer checking our published key would
            "database_url": sample_db.uri("analyst"),
        },
        tmp_path / "2026-10" / "packet",
        timeout_s=120,
        name="report",
    )
    assert packet.verdict == "pass"
    return tmp_path / "2026-10"


@pytest.mark.slow
def test_index_and_site_report_in_chromium(rendered: Path) -> None:
    pages = (rendered / "index.html", rendered / "monthly" / "demo-hardcap.html", rendered / "packet" / "report.html")
    for page_path in pages:
        with open_page(page_path.as_uri(), width=WINDOW_PX) as page:
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= WINDOW_PX, f"{page_path.name} scrolls sideways: {width}px"
            outside = [u for u in page.requested if not u.startswith(("file:", "data:"))]
            assert outside == [], outside
    with open_page((rendered / "monthly" / "demo-hardcap.html").as_uri(), width=WINDOW_PX) as page:
        # The verdict banner is the first thing on the page, above every table.
        first = page.evaluate(
            "(() => { const t = document.body.innerText; return [t.indexOf('WARN ·'), t.indexOf('billing_state')]; })()"
        )
        assert 0 <= first[0] < first[1]
    with open_page((rendered / "packet" / "report.html").as_uri(), width=WINDOW_PX) as page:
        # The packet's report opens on its verdict, then the verifier's checks table.
        order = page.evaluate(
            "(() => { const t = document.body.innerText;"
            " return [t.indexOf('PASS ·'), t.indexOf('Verifier checks'), t.indexOf('The month in numbers')]; })()"
        )
        assert 0 <= order[0] < order[1] < order[2]
        assert page.evaluate("document.querySelectorAll('img[src^=\"data:image/svg+xml\"]').length") == 1

    # The index sorts and filters with JavaScript, and shows everything without it.
    index = (rendered / "index.html").as_uri()
    with open_page(index, width=WINDOW_PX) as page:
        assert page.evaluate(ROW_IDS) == ["demo-hardcap", "demo-overage"]
        # Sort by billable: click the header twice (ascending, then descending).
        header = "Array.from(document.querySelectorAll('#sites th')).find(th => th.textContent === 'billable')"
        page.evaluate(f"{header}.click()")
        page.evaluate(f"{header}.click()")
        billable = page.evaluate(
            "Array.from(document.querySelectorAll('#sites tbody tr')).map(r => parseInt(r.cells[2].dataset.sort))"
        )
        assert billable == sorted(billable, reverse=True) and len(set(billable)) > 1
        # Filter: only the rows that mention the retry storm stay.
        page.evaluate(
            "(() => { const f = document.getElementById('filter'); f.value = 'retry_storm';"
            " f.dispatchEvent(new Event('input')); })()"
        )
        assert page.evaluate(ROW_IDS) == ["demo-hardcap"]
        totals = page.evaluate("document.querySelector('#sites tfoot').innerText")
        assert "Total: 2 site(s)" in totals
        links = page.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.getAttribute('href'))")
        assert links[:2] == ["../2026-09/index.html", "../2026-11/index.html"]
        hardcap = page.evaluate("document.querySelector('#sites tbody tr').innerText")
        assert "drift" in hardcap and "snapshot verification" in hardcap
    with open_page(index, width=WINDOW_PX, javascript=False) as page:
        # No script ran: no filter box, every site in its server order, every link there.
        assert page.evaluate("document.getElementById('filter')") is None
        assert page.evaluate(ROW_IDS) == ["demo-hardcap", "demo-overage"]
        hrefs = page.evaluate("Array.from(document.querySelectorAll('#sites a')).map(a => a.getAttribute('href'))")
        assert {"monthly/demo-hardcap.html", "drift/demo-hardcap.html", "verify/demo-hardcap.html"} <= set(hrefs)
        assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW_PX
