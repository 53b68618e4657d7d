"""The kernel's exception hierarchy.

Every error a user can cause or meet carries a stable ``code`` (the ``error`` field of HTTP bodies,
the one line printed by the CLI) and an HTTP status. Programmer errors are assertions, not these.

    KernelError                      base; code, http_status, message
    ├── ConfigError                  settings or environment unusable (bad URL, port taken)
    ├── DatabaseUnavailable          the store of record cannot be reached
    ├── MigrationError               migrations cannot be applied
    │   ├── MigrationChecksumMismatch  an applied migration file was edited
    │   └── SchemaBehind             the database is older than the code needs
    ├── InputError                   bad input from a caller (400/422)
    ├── NotFound                     an unknown site, key or month (404, or 403 where hiding it)
    ├── AuthError                    missing/unknown/revoked credentials (401)
    ├── Forbidden                    authenticated but not allowed (403)
    ├── Conflict                     the request contradicts stored state (409)
    └── BillingGateClosed            the ledger write failed: nothing billed, nothing published
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BillingGateClosed",
    "ConfigError",
    "Conflict",
    "DatabaseUnavailable",
    "Forbidden",
    "InputError",
    "KernelError",
    "MigrationChecksumMismatch",
    "MigrationError",
    "NotFound",
    "SchemaBehind",
]


class KernelError(Exception):
    """Base of every error the kernel reports to a user."""

    code = "kernel_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(KernelError):
    code = "config_error"


class DatabaseUnavailable(KernelError):
    code = "database_unavailable"
    http_status = 503


class MigrationError(KernelError):
    code = "migration_error"


class MigrationChecksumMismatch(MigrationError):
    code = "migration_checksum_mismatch"


class SchemaBehind(MigrationError):
    code = "schema_behind"
    http_status = 503


class InputError(KernelError):
    code = "invalid_input"
    http_status = 400


class NotFound(KernelError):
    code = "not_found"
    http_status = 404


class AuthError(KernelError):
    code = "unauthorized"
    http_status = 401


class Forbidden(KernelError):
    code = "forbidden"
    http_status = 403


class Conflict(KernelError):
    code = "conflict"
    http_status = 409


class BillingGateClosed(KernelError):
    code = "billing_gate_closed"
    http_status = 500
