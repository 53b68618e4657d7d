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
| `REVKERNEL_CLOCK` | `system`; `file:<path>` or `file-frozen:<path>` for demos and tests (`kernel.clock`) | `system` |
| `REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS` | the watchtower reports dispute holds older than this (whole days > 0) | `30` |
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from kernel.errors import ConfigError

__all__ = ["PROJECT_ROOT", "Settings", "get_settings"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent

APP_ROLE = "revkernel_app"
ANALYST_ROLE = "revkernel_analyst"
# A dispute hold older than this is reported by the watchtower (a case someone forgot to close).
DISPUTE_HOLD_MAX_AGE_DAYS = 30


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


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
    dispute_hold_max_age_days: int = DISPUTE_HOLD_MAX_AGE_DAYS
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
            dispute_hold_max_age_days=_positive_days(
                "REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS", env.get("REVKERNEL_DISPUTE_HOLD_MAX_AGE_DAYS")
            ),
            extra={k: v for k, v in env.items() if k.startswith("REVKERNEL_")},
        )

    def seconds(self, name: str, default: float) -> float:
        """A positive duration in seconds from the ``REVKERNEL_*`` environment, or ``default``."""
        text = self.extra.get(name, "").strip()
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0 or value == float("inf"):
            raise ConfigError(f"{name} must be a positive number of seconds, not {text!r}")
        return value

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
