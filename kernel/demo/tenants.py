"""The deterministic demo tenants: four plans and billing modes, the same on every machine.

Their site ids are derived from fixed names so that `make demo` is repeatable and the notebooks'
default parameters point at them (a site id is not a credential). Their keys and tokens are not:
every secret is random, printed once when issued, and kept in ``<data dir>/demo-credentials.env``
(mode 0600, ``NAME=value`` lines a shell can source) for the README's copy-paste steps. A re-run
reuses the secrets of that file that still work and issues new ones for those that do not; every
other live credential of a demo site, and every demo-labelled platform token (the derived tokens
of earlier versions included), is revoked. Nothing in the ledger depends on a key's value: the
traffic uses client event ids, so the demo's ledger stays byte-deterministic.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

from kernel.clock import SystemClock
from kernel.tenants import authenticate, create_site, issue_key, revoke_key
from kernel.tenants.keys import hash_secret

__all__ = [
    "CREDENTIALS_FILE",
    "DEMO_KEY_LABEL",
    "DEMO_LABELS",
    "DEMO_SITES",
    "DemoSite",
    "DemoTenants",
    "credential_name",
    "ensure_demo_tenants",
    "read_credentials",
]

_NAMESPACE = uuid.UUID("6f1c1d2e-8a55-4d3c-9a53-2b0e6f0c1a10")
CREDENTIALS_FILE = "demo-credentials.env"
DEMO_KEY_LABEL = "revkernel-demo"
DEMO_LABELS = (DEMO_KEY_LABEL, "demo")  # "demo": the (derived, public) tokens of earlier versions
DEMO_ACTOR = "demo"
SITE_ROLES = ("ingest", "viewer", "billing", "admin")


@dataclass(frozen=True)
class DemoSite:
    public_id: str
    name: str
    monthly_limit: int
    soft_limit_enabled: bool
    hard_cap_multiplier: Decimal
    rate_limit_per_minute: int
    billing_mode: str
    story: str

    @property
    def site_id(self) -> uuid.UUID:
        return uuid.uuid5(_NAMESPACE, self.public_id)


DEMO_SITES: tuple[DemoSite, ...] = (
    DemoSite(
        "demo-hardcap",
        "Acme Analytics",
        400,
        False,
        Decimal(1),
        600,
        "enforce",
        "enforce, hard cap: rejected past 400 a month, then a retry storm",
    ),
    DemoSite(
        "demo-overage",
        "Globex Shop",
        300,
        True,
        Decimal("1.5"),
        600,
        "enforce",
        "enforce, soft limit: OVERAGE from 301 to 450, rejected past 450",
    ),
    DemoSite(
        "demo-shadow",
        "Initech Blog",
        200,
        False,
        Decimal(1),
        600,
        "shadow",
        "shadow: decisions recorded, never rejected",
    ),
    DemoSite(
        "demo-off",
        "Umbrella Labs",
        1000,
        False,
        Decimal(1),
        600,
        "off",
        "billing off: every event recorded non-billable",
    ),
)


def credential_name(role: str, public_id: str | None = None) -> str:
    """The variable of one credential in the file: ``DEMO_OVERAGE_INGEST_KEY``, ``DEMO_PLATFORM_ADMIN_TOKEN``."""
    scope = (public_id or "demo-platform").upper().replace("-", "_")
    return f"{scope}_{role.upper()}_{'KEY' if role == 'ingest' else 'TOKEN'}"


@dataclass
class DemoTenants:
    """What ``ensure_demo_tenants`` did: sites (created now or not) and the credentials."""

    sites: list[tuple[DemoSite, bool]]
    credentials: dict[str, str]
    issued: list[str] = field(default_factory=list)  # credential names issued now (print them once)
    revoked: int = 0

    def ingest_key(self, public_id: str) -> str:
        return self.credentials[credential_name("ingest", public_id)]


def read_credentials(path: Path) -> dict[str, str]:
    """The ``NAME=value`` lines of a credentials file (missing file: empty)."""
    if not path.exists():
        return {}
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # secrets: owner only, whatever created the file
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[name.strip()] = value.strip()
    return values


def _write_credentials(path: Path, credentials: dict[str, str], now: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# revkernel demo credentials, random, written {now.isoformat()} (keep private: mode 0600)",
        f"# load them with: set -a; . {path}; set +a",
        *(f"{name}={value}" for name, value in sorted(credentials.items())),
    ]
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _slots() -> list[tuple[str, uuid.UUID | None, str]]:
    slots: list[tuple[str, uuid.UUID | None, str]] = [(credential_name("admin"), None, "admin")]
    for demo in DEMO_SITES:
        slots += [(credential_name(role, demo.public_id), demo.site_id, role) for role in SITE_ROLES]
    return slots


def ensure_demo_tenants(
    conn: psycopg.Connection[Any], store: Path | None = None, *, now: datetime | None = None
) -> DemoTenants:
    """Create the missing demo sites and make their credentials exactly those of ``store``.

    With ``store`` None (the audit sample) only the sites are ensured, with random keys kept nowhere.
    """
    now = now or SystemClock().now()
    sites: list[tuple[DemoSite, bool]] = []
    for demo in DEMO_SITES:
        exists = conn.execute("SELECT 1 FROM sites WHERE id = %s", (demo.site_id,)).fetchone()
        if exists is None:
            create_site(
                conn,
                name=demo.name,
                monthly_limit=demo.monthly_limit,
                soft_limit_enabled=demo.soft_limit_enabled,
                hard_cap_multiplier=demo.hard_cap_multiplier,
                rate_limit_per_minute=demo.rate_limit_per_minute,
                billing_mode=demo.billing_mode,
                public_id=demo.public_id,
                site_id=demo.site_id,
                key_label=DEMO_KEY_LABEL,
            )
        sites.append((demo, exists is None))
    result = DemoTenants(sites, {})
    if store is None:
        return result
    known = read_credentials(store)
    for name, site_id, role in _slots():
        secret = known.get(name)
        key = authenticate(conn, secret, now=now) if secret else None
        if key is None or key.site_id != site_id or key.role != role:
            _, secret = issue_key(conn, site_id=site_id, role=role, label=DEMO_KEY_LABEL)
            result.issued.append(name)
        assert secret is not None
        result.credentials[name] = secret
    result.revoked = _revoke_others(conn, set(result.credentials.values()), now)
    if result.issued or set(known) != set(result.credentials):
        _write_credentials(store, result.credentials, now)
    return result


def _revoke_others(conn: psycopg.Connection[Any], kept: set[str], now: datetime) -> int:
    """Revoke every live credential of the demo sites, and every demo platform token, not kept."""
    rows = conn.execute(
        """
        SELECT id::text, key_hash FROM api_keys
        WHERE revoked_at IS NULL
          AND (site_id = ANY(%s) OR (site_id IS NULL AND label = ANY(%s)))
        """,
        ([d.site_id for d in DEMO_SITES], list(DEMO_LABELS)),
    ).fetchall()
    kept_hashes = {hash_secret(secret) for secret in kept}
    stale = [key_id for key_id, key_hash in rows if key_hash not in kept_hashes]
    for key_id in stale:
        revoke_key(conn, key_id, now=now, actor=DEMO_ACTOR)
    return len(stale)
