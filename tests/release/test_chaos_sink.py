"""The chaos drill's webhook sink: it checks the relay's HMAC and records what it received."""

from __future__ import annotations

import json
import time

import httpx

from kernel.cron.relay import sign_webhook
from kernel.release.stand import WebhookSink, free_port


def _post(sink: WebhookSink, body: bytes, secret: str) -> httpx.Response:
    timestamp = str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "x-revkernel-timestamp": timestamp,
        "x-revkernel-signature": sign_webhook(secret, timestamp, body),
    }
    return httpx.post(sink.url, content=body, headers=headers, timeout=5.0)


def test_sink_records_signed_batches_refuses_bad_signatures_and_can_fail_after_receipt() -> None:
    sink = WebhookSink(free_port(), "sink-secret-0123456789")
    sink.start()
    try:
        body = json.dumps(
            {
                "site_id": "s1",
                "events": [{"outbox_id": 1, "idempotency_key": "k1"}, {"outbox_id": 2, "idempotency_key": "k2"}],
            }
        ).encode()
        assert _post(sink, body, sink.secret).status_code == 200
        assert _post(sink, body, "another-secret").status_code == 401
        sink.flaky_until = time.monotonic() + 60
        assert _post(sink, body, sink.secret).status_code == 500
        assert sink.snapshot() == [("s1", "k1"), ("s1", "k2"), ("s1", "k1"), ("s1", "k2")]
        assert sink.bad_signatures == 1
        sink.stop()
        try:
            _post(sink, body, sink.secret)
            raised = False
        except httpx.ConnectError:
            raised = True
        assert raised, "a stopped sink must refuse connections"
        sink.start()
        sink.flaky_until = 0.0
        assert _post(sink, body, sink.secret).status_code == 200
    finally:
        sink.stop()
