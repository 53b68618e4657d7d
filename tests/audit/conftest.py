from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from kernel.audit import connect_analyst
from kernel.audit.sample import seed_demo_sample
from kernel.db.connect import Database


@pytest.fixture
def sample_ids(owner_conn: psycopg.Connection[Any]) -> dict[str, uuid.UUID]:
    """The demo tenants with two frozen months of deterministic sample traffic."""
    return seed_demo_sample(owner_conn)


@pytest.fixture
def analyst(database: Database) -> Iterator[psycopg.Connection[Any]]:
    with connect_analyst(database.uri("analyst")) as conn:
        yield conn
