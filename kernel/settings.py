"""One typed settings object, read from the environment once.

| variable | meaning | default |
|---|---|---|
| `DATABASE_URL` | owner connection of an existing PostgreSQL; nothing embedded is started | embedded server |
| `APP_DATABASE_URL` | explicit URL for the app role | owner URL with user `revkernel_app` |
| `ANALYST_DATABASE_URL` | explicit URL for the analyst role | owner URL, user `revkernel_analyst` |
| `REVKERNEL_DATA_DIR` | embedded PostgreSQL data, signing key, archives | `<project>/.data` |
| `REVKERNEL_DB_NAME` | database created inside the embedded server | `revkernel` |
| `REDIS_URL` | shared rate limiter, Redis mirror, stream sink | none |
| `CRON_SECRET` | bearer secret of every cron endpoint | empty (every cron answers 403) |
| `BILLING_ENABLED` | runbook rollback flag: `false` records every event non-billable | `true` |
| `REVKERNEL_COMMIT` | deployed commit for `x-opsmantik-commit` | `git rev-parse HEAD`, else `unknown` |
| `REVKERNEL_TRUSTED_PROXIES` | proxy addresses/CIDRs (comma-separated) whose `X-Forwarded-For` counts | none |
| `REVKERNEL_CLIENT_HASH_SECRET` | 64 hex, key of the client-address hash; the same on every host | a data-dir file |
| `REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS` | the watchtower reports dispute holds older than this (whole days > 0) | `30` |
| `REVKERNEL_CLOCK` | `system`; `file:`, `file-frozen:` or `offset:` for tests (`kernel.clock`) | `system` |
| `REVKERNEL_LEDGER_TIMEOUT_S` | wait for the ledger statement, then resolve its outcome (`ingest.outcome`) | `5` |
| `REVKERNEL_DEDUP_HORIZON_MONTHS` | months a cleaned-up client key stays a duplicate (≥ 13) | `13` |
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from kernel.errors import ConfigError

__all__ = ["PROJECT_ROOT", "IpNetwork", "Settings", "get_settings"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROJECT_ROOT = Path(__file__).resolve().parent.parent

APP_ROLE = "revkernel_app"
LEDGER_TIMEOUT_S = 5.0
# SPEC retention is 90 days; a cleaned key is remembered at least 13 months (issue 11 §2).
DEDUP_HORIZON_MIN_MONTHS = 13
ANALYST_ROLE = "revkernel_analyst"
# A dispute hold older than this is reported by the watchtower (a case someone forgot to close).
DISPUTE_HOLD_MAX_AGE_DAYS = 30


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _proxies(text: str | None) -> tuple[IpNetwork, ...]:
    networks: list[IpNetwork] = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"REVKERNEL_TRUSTED_PROXIES: {item.strip()!r} is not an address or CIDR") from exc
    return tuple(networks)


def _hex_secret(name: str, text: str | None) -> bytes | None:
    if not text or not text.strip():
        return None
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ConfigError(f"{name} must be 64 hex characters")
    return value


def _positive_days(name: str, value: str | None) -> int:
    if value is None or not value.strip():
        return DISPUTE_HOLD_MAX_AGE_DAYS
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ConfigError(f"{name} must be a whole number of days > 0, not {text!r}")
    return int(text)


def _commit() -> str:
    env = os.environ.get("REVKERNEL_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def _positive_seconds(env: dict[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
    return value


def _horizon_months(text: str | None) -> int:
    if text is None or not text.strip():
        return DEDUP_HORIZON_MIN_MONTHS
    try:
        months = int(text.strip())
    except ValueError:
        months = 0
    if months < DEDUP_HORIZON_MIN_MONTHS:
        raise ConfigError(
            f"REVKERNEL_DEDUP_HORIZON_MONTHS must be a whole number of months"
            f" >= {DEDUP_HORIZON_MIN_MONTHS}, not {text!r}"
        )
    return months


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    app_database_url: str | None = None
    analyst_database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: PROJECT_ROOT / ".data")
    db_name: str = "revkernel"
    app_role: str = APP_ROLE
    analyst_role: str = ANALYST_ROLE
    redis_url: str | None = None
    cron_secret: str = ""
    billing_enabled: bool = True
    commit: str = "unknown"
    clock: str = "system"
    trusted_proxies: tuple[IpNetwork, ...] = ()
    client_hash_secret: bytes | None = field(default=None, repr=False)
    dispute_hold_max_age_days: int = DISPUTE_HOLD_MAX_AGE_DAYS
    ledger_timeout_s: float = LEDGER_TIMEOUT_S
    dedup_horizon_months: int = DEDUP_HORIZON_MIN_MONTHS
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("REVKERNEL_DATA_DIR") or PROJECT_ROOT / ".data").expanduser()
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            app_database_url=env.get("APP_DATABASE_URL") or None,
            analyst_database_url=env.get("ANALYST_DATABASE_URL") or None,
            data_dir=data_dir.resolve(),
            db_name=env.get("REVKERNEL_DB_NAME") or "revkernel",
            redis_url=env.get("REDIS_URL") or None,
            cron_secret=env.get("CRON_SECRET", ""),
            billing_enabled=_flag(env.get("BILLING_ENABLED"), True),
            commit=_commit(),
            clock=env.get("REVKERNEL_CLOCK") or "system",
            trusted_proxies=_proxies(env.get("REVKERNEL_TRUSTED_PROXIES")),
            client_hash_secret=_hex_secret("REVKERNEL_CLIENT_HASH_SECRET", env.get("REVKERNEL_CLIENT_HASH_SECRET")),
            dispute_hold_max_age_days=_positive_days(
                "REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS", env.get("REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS")
            ),
            ledger_timeout_s=_positive_seconds(env, "REVKERNEL_LEDGER_TIMEOUT_S", LEDGER_TIMEOUT_S),
            dedup_horizon_months=_horizon_months(env.get("REVKERNEL_DEDUP_HORIZON_MONTHS")),
            extra={k: v for k, v in env.items() if k.startswith("REVKERNEL_")},
        )

    def seconds(self, name: str, default: float) -> float:
        """A positive duration in seconds from the ``REVKERNEL_*`` environment, or ``default``."""
        return _positive_seconds(self.extra, name, default)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def embedded(self) -> bool:
        """True when the kernel runs its own PostgreSQL (no ``DATABASE_URL``)."""
        return self.database_url is None

    @property
    def pg_data_dir(self) -> Path:
        return self.data_dir / "pg"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
