"""Version-1 idempotency keys against vectors computed by hand (`printf '%s' … | sha256sum`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from kernel.ingest.keys import classify, derive_v1_key, server_ms
from kernel.ingest.schemas import EventIn

SITE = uuid.UUID("6f1c1d2e-8a55-4d3c-9a53-2b0e6f0c1a10")

# (site, ec, ea, el, url, fp, server_ms) -> sha256 of the string in the comment
VECTORS = [
    # "6f1c…1a10:click|buy|Pro plan:https://shop.example/p?x=1:fp-123:1767225600000"
    (
        SITE,
        ("click", "buy", "Pro plan", "https://shop.example/p?x=1", "fp-123"),
        1767225604999,
        "f21dede9034f0009f52c852fa0cd14e21356307c19fec86b82cd25ab7594bb30",
    ),
    # "6f1c…1a10:||:::1767225605000" (every field missing; next bucket starts at …5000)
    (
        SITE,
        (None, None, None, None, None),
        1767225605000,
        "cfe1bb240ff0ce69060dff993f8f5371949f32d278d86fb5669445212a8c8c89",
    ),
    # "00000000-0000-0000-0000-000000000001:interaction|scroll_depth|50:https://ü.example/ş:fp:0" (UTF-8)
    (
        uuid.UUID(int=1),
        ("interaction", "scroll_depth", "50", "https://ü.example/ş", "fp"),
        4999,
        "559c50fa5d9f5d290834961166155adccc10c94969cd0219270bb7d825baaf7e",
    ),
]


@pytest.mark.parametrize(("site_id", "fields", "now_ms", "expected"), VECTORS)
def test_v1_key_matches_hand_computed_vectors(
    site_id: uuid.UUID, fields: tuple[str | None, ...], now_ms: int, expected: str
) -> None:
    ec, ea, el, url, fp = fields
    assert derive_v1_key(site_id, ec=ec, ea=ea, el=el, url=url, fp=fp, now_ms=now_ms) == expected


def test_bucket_is_five_seconds_of_server_time() -> None:
    same = {derive_v1_key(SITE, ec="a", ea="b", el=None, url=None, fp=None, now_ms=ms) for ms in (5000, 7500, 9999)}
    assert len(same) == 1
    assert derive_v1_key(SITE, ec="a", ea="b", el=None, url=None, fp=None, now_ms=10000) not in same


def test_server_ms_is_exact() -> None:
    assert server_ms(datetime(2026, 1, 1, 0, 0, 4, 999000, tzinfo=UTC)) == 1767225604999


def test_classification() -> None:
    assert classify(EventIn(ec="interaction", ea="scroll_depth")) == "scroll_depth"
    assert classify(EventIn(ec="system", ea="heartbeat")) == "system"
    assert classify(EventIn(ec="interaction", ea="click")) is None
    assert classify(EventIn(ec="scroll_depth")) is None
