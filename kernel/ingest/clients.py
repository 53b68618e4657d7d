"""Who sent a request: the client address behind trusted proxies, and its salted hash (pure, no I/O).

**Address.** The socket peer, unless the peer is one of ``REVKERNEL_TRUSTED_PROXIES`` (addresses or
CIDRs): then ``X-Forwarded-For`` is read from the right, skipping trusted proxies, and the first
address that is not one is the client (each proxy appends the address it saw, so only the hops
added by our own proxies can be believed). A malformed hop ends the walk at the last trusted
one. Without trusted proxies the header is ignored entirely: anyone can write it. uvicorn's own
proxy-header handling is switched off (``revkernel serve``) so that this is the only rule.

**Rate-limit key.** An IPv4 address as is; an IPv6 address by its /64 network, because one host
commonly holds a whole /64 and could otherwise pick a fresh address per request.

**Hash.** ``client_hash`` = the first 32 hex of HMAC-SHA256(secret, ``"v1|<year_month>|<key>"``):
stored with each ledger row and used for the per-client rate-limit window, never the raw
address. The secret (``REVKERNEL_CLIENT_HASH_SECRET``, 64 hex, the same on every host; else
created once in ``<data dir>/client-hash.key``, mode 0600) makes the 2^32 IPv4 addresses
unguessable from the hash, and the month in the message makes one month's hashes unlinkable
to another's.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from kernel.errors import ConfigError
from kernel.settings import IpNetwork, Settings

__all__ = [
    "CLIENT_HASH_FILE",
    "ClientHasher",
    "client_address",
    "load_client_hash_secret",
    "rate_key",
]

CLIENT_HASH_FILE = "client-hash.key"
CLIENT_HASH_HEX = 32
MAX_FORWARDED_HOPS = 32  # a longer X-Forwarded-For is cut to its last hops
IPV6_RATE_PREFIX = 64

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: tuple[IpNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: tuple[IpNetwork, ...]) -> str | None:
    """The client's address (module docstring), or None when the peer is not an IP (tests, sockets)."""
    address = _parse(peer) if peer else None
    if address is None:
        return None
    if not proxies or not _trusted(address, proxies):
        return str(address)
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        parsed = _parse(hop)
        if parsed is None:
            break
        if not _trusted(parsed, proxies):
            return str(parsed)
        address = parsed
    return str(address)


def rate_key(address: str) -> str:
    """The unit one client is limited by: the IPv4 address, or the IPv6 /64."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_RATE_PREFIX}", strict=False))
    return str(parsed)


class ClientHasher:
    """``client_hash`` of a client address for a month (module docstring)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("the client hash secret must be at least 16 bytes")
        self._secret = secret

    def digest(self, address: str, year_month: str) -> str:
        message = f"v1|{year_month}|{rate_key(address)}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:CLIENT_HASH_HEX]


def load_client_hash_secret(settings: Settings) -> bytes:
    """The secret from ``REVKERNEL_CLIENT_HASH_SECRET``, else the data directory's key file (made once)."""
    if settings.client_hash_secret is not None:
        return settings.client_hash_secret
    path = settings.data_dir / CLIENT_HASH_FILE
    if not path.exists():
        _create(path)
    text = path.read_text(encoding="ascii").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as exc:
        raise ConfigError(f"{path} must hold 64 hex characters") from exc
    if len(secret) != 32:
        raise ConfigError(f"{path} must hold 64 hex characters")
    return secret


def _create(path: Path) -> None:
    """Write a new secret to a private temporary file, then link it into place (never overwrites:
    when several workers start at once, the first link wins and every worker reads that one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker linked first: read theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
