"""Fixtures for ingest tests: an in-process app on a manual clock (helpers in ``support``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from kernel.app import create_app
from kernel.clock import ManualClock
from kernel.settings import Settings
from tests.ingest.support import START, Harness


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def harness(settings: Settings, app_conn: psycopg.Connection[Any], clock: ManualClock) -> Iterator[Harness]:
    with TestClient(create_app(settings, clock=clock)) as client:
        yield Harness(client, clock, app_conn, settings)
