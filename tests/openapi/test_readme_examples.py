"""The README's two request examples are accepted by the real endpoint and match the OpenAPI document."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.openapi import BATCH_EXAMPLE, SINGLE_EXAMPLE
from kernel.settings import PROJECT_ROOT, Settings
from tests.ingest.support import START, auth, make_site


def _readme_examples() -> list[dict[str, Any]]:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**OpenAPI and request examples.**") :]
    section = section[: section.index("\n## ")]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)\n```", section, flags=re.S)]


def test_readme_examples_are_the_documented_ones_and_are_accepted(
    settings: Settings, app_conn: psycopg.Connection[Any]
) -> None:
    examples = _readme_examples()
    assert examples == [SINGLE_EXAMPLE, BATCH_EXAMPLE]  # the same bodies the OpenAPI document shows
    site = make_site(app_conn, public_id="shop-eu", monthly_limit=100)
    with TestClient(create_app(settings, clock=ManualClock(START))) as client:
        single = client.post("/api/sync", json=examples[0], headers=auth(site))
        assert single.status_code == 200 and single.json()["status"] == "accepted"
        batch = client.post("/api/sync", json=examples[1], headers=auth(site))
        assert batch.status_code == 200 and [r["status"] for r in batch.json()["results"]] == ["accepted"] * 2
