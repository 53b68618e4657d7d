"""The snapshot signing key: from ``REVKERNEL_SIGNING_KEY`` or created on first use.

Order: the environment variable ``REVKERNEL_SIGNING_KEY`` (64 hex characters, the raw Ed25519
seed) wins; otherwise ``<data_dir>/signing/ed25519.seed`` (hex, mode 0600), created atomically on
first use so that two processes starting together end up with the same key. The public half is
recorded in ``signing_keys`` (append-only for the app role) and served to verifiers.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from kernel.clock import format_utc
from kernel.errors import ConfigError
from kernel.ledger import SigningKey
from kernel.settings import Settings

__all__ = ["SIGNING_KEY_ENV", "load_signing_key", "public_keys", "register_public_key", "signing_key_path"]

SIGNING_KEY_ENV = "REVKERNEL_SIGNING_KEY"
SEED_BYTES = 32
_SEED_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def signing_key_path(settings: Settings) -> Path:
    return settings.data_dir / "signing" / "ed25519.seed"


def load_signing_key(settings: Settings) -> SigningKey:
    """The signing key of this deployment (environment, else data directory, else a new one).

    Raises:
        ConfigError: the environment or the key file holds something that is not a 32-byte hex seed.
    """
    env = settings.extra.get(SIGNING_KEY_ENV, "").strip()
    if env:
        if not _SEED_HEX.match(env):
            raise ConfigError(f"{SIGNING_KEY_ENV} must be 64 hex characters (a raw Ed25519 seed)")
        return SigningKey.from_seed(bytes.fromhex(env))
    path = signing_key_path(settings)
    if not path.exists():
        _create_key_file(path)
    text = path.read_text(encoding="ascii").strip()
    if not _SEED_HEX.match(text):
        raise ConfigError(f"signing key file {path} does not hold a 64-hex-character Ed25519 seed")
    return SigningKey.from_seed(bytes.fromhex(text))


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = SigningKey.generate().seed.hex()
    try:
        # O_EXCL: when two processes race, exactly one writes and both then read the same seed.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(seed + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def register_public_key(conn: psycopg.Connection[Any], key: SigningKey, at: datetime) -> None:
    """Record the key's public half (idempotent)."""
    conn.execute(
        "INSERT INTO signing_keys (key_id, public_key, algorithm, created_at) VALUES (%s, %s, 'ed25519', %s)"
        " ON CONFLICT (key_id) DO NOTHING",
        (key.key_id, key.public_key.hex(), at),
    )


def public_keys(conn: psycopg.Connection[Any]) -> list[dict[str, str]]:
    """Every public key that ever signed a snapshot here, oldest first."""
    rows = conn.execute(
        "SELECT key_id, public_key, algorithm, created_at FROM signing_keys ORDER BY created_at, key_id"
    ).fetchall()
    return [
        {"key_id": kid, "public_key": pub, "algorithm": alg, "created_at": format_utc(created)}
        for kid, pub, alg, created in rows
    ]
