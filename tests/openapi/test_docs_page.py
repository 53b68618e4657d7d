"""The rendered API docs (/schema) in real headless Chromium with every host outside 127.0.0.1
unreachable: Swagger UI loads from the app itself and shows every operation."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from kernel.release.stand import free_port
from kernel.reporting.browser import open_page
from kernel.settings import Settings
from tests.release.release_live import live_server


@pytest.mark.slow
def test_docs_page_works_offline(settings: Settings, tmp_path: Path) -> None:
    with (
        live_server(settings, free_port(), tmp_path / "serve.log") as url,
        open_page(url + "/schema", width=1400) as page,
    ):
        operations = page.wait_for("document.querySelectorAll('.opblock').length", timeout_s=60)
        assert operations >= 15
        summaries = page.evaluate(
            "Array.from(document.querySelectorAll('.opblock-summary-path')).map(e => e.textContent)"
        )
        assert "/api/sync" in "".join(summaries)
        assert page.evaluate("document.querySelector('.information-container .title').textContent").startswith(
            "Revenue kernel"
        )
        hosts = {urlsplit(u).netloc for u in page.requested if u.startswith("http")}
        assert hosts == {urlsplit(url).netloc}, page.requested
        assert page.failed == []
