"""``revkernel site create|list|show|update``, ``token create|list|revoke``, ``key create|list|rotate|revoke``.

Every change of a site, a plan or a key goes through ``kernel.tenants`` (the SECURITY DEFINER
functions of migration 0020) and is written to ``audit_log`` with its values before and after;
the actor is ``cli:<operating-system user>``. Time comes from ``REVKERNEL_CLOCK``.
"""

from __future__ import annotations

import getpass
import os
import re
from datetime import datetime, timedelta
from typing import Any

import click

from kernel.cli.context import CliContext, echo_json, pass_cli
from kernel.clock import clock_from_spec
from kernel.errors import InputError
from kernel.tenants import (
    BILLING_MODES,
    INGEST_AUTHS,
    USER_ROLES,
    KeyRecord,
    Site,
    create_site,
    issue_key,
    list_keys,
    list_sites,
    parse_multiplier,
    resolve_site,
    revoke_key,
    rotate_key,
    update_site,
)

__all__ = ["parse_duration", "register"]

DEFAULT_ROTATION_OVERLAP = "24h"
_DURATION = re.compile(r"^(\d{1,7})([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no passwd entry (containers): the uid says who
        user = f"uid{os.getuid()}"
    return f"cli:{user}"


def _now(cli: CliContext) -> datetime:
    return clock_from_spec(cli.settings.clock).now()


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d`` or plain seconds."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise InputError(f"a duration is a number with s, m, h or d, like 24h; got {text!r}", code="invalid_duration")
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


def _site_json(site: Site) -> dict[str, Any]:
    return {**site.__dict__, "id": str(site.id), "hard_cap": site.hard_cap}


@click.group("site")
def site_group() -> None:
    """Tenants and their plans."""


@site_group.command("create")
@click.option("--name", required=True, help="Display name of the site.")
@click.option(
    "--monthly-limit",
    type=click.IntRange(min=0),
    required=True,
    help="Billable events per month (L).",
)
@click.option(
    "--soft-limit/--hard-limit",
    default=False,
    show_default=True,
    help="Soft: past L bill OVERAGE up to the hard cap. Hard: reject past L.",
)
@click.option(
    "--hard-cap-multiplier",
    default="1",
    show_default=True,
    help="H = floor(L * this), with --soft-limit.",
)
@click.option(
    "--rate-limit-per-minute",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Events per minute before 429 rate_limited (a batch counts each of its events).",
)
@click.option(
    "--client-rate-limit-per-minute",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Events per minute per client address (public ingest only).",
)
@click.option(
    "--billing-mode",
    type=click.Choice(BILLING_MODES),
    default="enforce",
    show_default=True,
    help="enforce: quota applies; shadow: decisions recorded, never rejected; off: nothing billable.",
)
@click.option("--public-id", default=None, help="Public id the trackers send as `s` (default: generated).")
@click.option(
    "--ingest-auth",
    type=click.Choice(INGEST_AUTHS),
    default="key",
    show_default=True,
    help="key: Bearer ingest key required; public: keyless trackers from an allowed origin.",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    help="Browser origin allowed to ingest, like https://shop.example (repeat).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def site_create(
    cli: CliContext,
    name: str,
    monthly_limit: int,
    soft_limit: bool,
    hard_cap_multiplier: str,
    rate_limit_per_minute: int,
    client_rate_limit_per_minute: int,
    billing_mode: str,
    public_id: str | None,
    ingest_auth: str,
    allowed_origins: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a site with its plan and print its ingest key (shown once, stored hashed)."""
    multiplier = parse_multiplier(hard_cap_multiplier)
    with cli.db.transaction("app") as conn:
        new = create_site(
            conn,
            name=name,
            monthly_limit=monthly_limit,
            soft_limit_enabled=soft_limit,
            hard_cap_multiplier=multiplier,
            rate_limit_per_minute=rate_limit_per_minute,
            client_rate_limit_per_minute=client_rate_limit_per_minute,
            billing_mode=billing_mode,
            public_id=public_id,
            ingest_auth=ingest_auth,
            allowed_origins=allowed_origins,
        )
    result = {
        "site_id": str(new.site.id),
        "public_id": new.site.public_id,
        "ingest_key": new.ingest_key,
    }
    if as_json:
        echo_json(result)
        return
    for key, value in result.items():
        click.echo(f"{key}: {value}")
    click.echo("keep the ingest key now: it is stored hashed and cannot be shown again", err=True)


@site_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def site_list(cli: CliContext, as_json: bool) -> None:
    """List sites with their plans."""
    with cli.db.connect("app") as conn:
        sites = list_sites(conn)
    if as_json:
        echo_json([_site_json(s) for s in sites])
        return
    for s in sites:
        limit = f"L={s.monthly_limit} H={s.hard_cap} {'soft' if s.soft_limit_enabled else 'hard'}"
        click.echo(f"{s.id}  {s.public_id:<20} {s.billing_mode:<8} {limit}  {s.name}")


@site_group.command("show")
@click.argument("site_ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def site_show(cli: CliContext, site_ref: str, as_json: bool) -> None:
    """Show a site (UUID or public id): plan, billing mode, ingest auth, origins, live keys."""
    now = _now(cli)
    with cli.db.connect("app") as conn:
        site = resolve_site(conn, site_ref)
        keys = list_keys(conn, site_id=site.id, roles=("ingest",), now=now)
        tokens = list_keys(conn, site_id=site.id, roles=USER_ROLES, now=now)
    if as_json:
        echo_json({**_site_json(site), "live_ingest_keys": len(keys), "live_user_tokens": len(tokens)})
        return
    rows = [
        ("site_id", str(site.id)),
        ("public_id", site.public_id),
        ("name", site.name),
        ("billing_mode", site.billing_mode),
        ("ingest_auth", site.ingest_auth),
        ("allowed_origins", ", ".join(site.allowed_origins) or "-"),
        ("monthly_limit", str(site.monthly_limit)),
        ("soft_limit", "on" if site.soft_limit_enabled else "off"),
        ("hard_cap_multiplier", str(site.hard_cap_multiplier)),
        ("hard_cap", str(site.hard_cap)),
        ("rate_limit_per_minute", f"{site.rate_limit_per_minute} events"),
        ("client_rate_limit_per_minute", f"{site.client_rate_limit_per_minute} events per address (public ingest)"),
        ("ingest keys", f"{len(keys)} live (revkernel key list --site {site.public_id})"),
        ("user tokens", f"{len(tokens)} live (revkernel token list --site {site.public_id})"),
    ]
    for name, value in rows:
        click.echo(f"{name:<30} {value}")


@site_group.command("update")
@click.argument("site_ref")
@click.option("--name", default=None, help="New display name.")
@click.option("--monthly-limit", type=click.IntRange(min=0), default=None, help="Billable events per month (L).")
@click.option("--soft-limit/--hard-limit", default=None, help="Soft: OVERAGE up to the hard cap. Hard: reject past L.")
@click.option("--hard-cap-multiplier", default=None, help="H = floor(L * this), with a soft limit.")
@click.option("--rate-limit-per-minute", type=click.IntRange(min=1), default=None, help="Events per minute.")
@click.option(
    "--client-rate-limit-per-minute",
    type=click.IntRange(min=1),
    default=None,
    help="Events per minute per client address (public ingest).",
)
@click.option("--billing-mode", type=click.Choice(BILLING_MODES), default=None, help="enforce | shadow | off.")
@click.option("--ingest-auth", type=click.Choice(INGEST_AUTHS), default=None, help="key | public.")
@click.option("--allowed-origin", "allowed_origins", multiple=True, help="Replace the allowlist (repeat).")
@click.option("--add-origin", "add_origins", multiple=True, help="Add an origin to the allowlist (repeat).")
@click.option("--remove-origin", "remove_origins", multiple=True, help="Remove an origin (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def site_update(
    cli: CliContext,
    site_ref: str,
    name: str | None,
    monthly_limit: int | None,
    soft_limit: bool | None,
    hard_cap_multiplier: str | None,
    rate_limit_per_minute: int | None,
    client_rate_limit_per_minute: int | None,
    billing_mode: str | None,
    ingest_auth: str | None,
    allowed_origins: tuple[str, ...],
    add_origins: tuple[str, ...],
    remove_origins: tuple[str, ...],
    as_json: bool,
) -> None:
    """Change a site's plan, billing mode, ingest auth or origins; audit-logged before/after.

    A new limit or billing mode applies to the next event at once (the ledger reads the plan in
    its own transaction); nothing already decided is re-decided. Origins, ingest auth and rate
    limits apply within a few seconds (each process caches a site for 2 s).
    """
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "name": name,
            "monthly_limit": monthly_limit,
            "soft_limit_enabled": soft_limit,
            "hard_cap_multiplier": parse_multiplier(hard_cap_multiplier) if hard_cap_multiplier is not None else None,
            "rate_limit_per_minute": rate_limit_per_minute,
            "client_rate_limit_per_minute": client_rate_limit_per_minute,
            "billing_mode": billing_mode,
            "ingest_auth": ingest_auth,
        }.items()
        if v is not None
    }
    if allowed_origins and (add_origins or remove_origins):
        raise InputError("give --allowed-origin, or --add-origin/--remove-origin, not both", code="invalid_change")
    with cli.db.transaction("app") as conn:
        site = resolve_site(conn, site_ref)
        if allowed_origins:
            changes["allowed_origins"] = tuple(dict.fromkeys(allowed_origins))
        elif add_origins or remove_origins:
            kept = [o for o in site.allowed_origins if o not in remove_origins]
            changes["allowed_origins"] = tuple(dict.fromkeys([*kept, *add_origins]))
        change = update_site(conn, site.id, changes, actor=_actor(), now=_now(cli))
    if as_json:
        echo_json({"site_id": str(site.id), "before": change.before, "after": change.after})
        return
    if not change.after:
        click.echo(f"{site.public_id}: nothing changed")
        return
    for field in change.after:
        click.echo(f"{site.public_id}: {field}: {change.before[field]} -> {change.after[field]}")


@click.group("token")
def token_group() -> None:
    """User tokens (viewer, billing, admin) for exports and dashboards."""


@token_group.command("create")
@click.option("--site", "site_ref", default=None, help="Site UUID or public id the token is for.")
@click.option("--role", required=True, help=f"One of {', '.join(USER_ROLES)}.")
@click.option("--platform", is_flag=True, help="A platform-wide token (no site).")
@click.option("--label", default=None, help="A note to recognise the token by.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def token_create(
    cli: CliContext,
    site_ref: str | None,
    role: str,
    platform: bool,
    label: str | None,
    as_json: bool,
) -> None:
    """Create a user token and print it (shown once, stored hashed)."""
    if role not in USER_ROLES:
        raise InputError(f"role must be one of {', '.join(USER_ROLES)}, got {role!r}", code="invalid_role")
    if platform == (site_ref is not None):
        raise InputError("give exactly one of --site or --platform", code="invalid_scope")
    with cli.db.transaction("app") as conn:
        site_id = resolve_site(conn, site_ref).id if site_ref is not None else None
        key, secret = issue_key(conn, site_id=site_id, role=role, label=label)
    result = {
        "token": secret,
        "key_id": str(key.id),
        "key_prefix": key.key_prefix,
        "role": key.role,
        "site_id": str(key.site_id) if key.site_id else None,
    }
    if as_json:
        echo_json(result)
        return
    for name, value in result.items():
        click.echo(f"{name}: {value if value is not None else 'platform'}")


def _print_keys(keys: list[KeyRecord], now: datetime, as_json: bool) -> None:
    if as_json:
        echo_json([k.to_json(now) for k in keys])
        return
    if not keys:
        click.echo("no keys")
        return
    for k in keys:
        end = k.revoked_at or k.expires_at
        when = f" {k.state(now)} {end.isoformat()}" if end is not None else " live"
        label = f"  {k.label}" if k.label else ""
        click.echo(f"{k.key_prefix}…  {k.id}  {k.role:<7} created {k.created_at.isoformat()}{when}{label}")


def _scope(cli: CliContext, site_ref: str | None, platform: bool) -> tuple[Any, str]:
    if platform == (site_ref is not None):
        raise InputError("give exactly one of --site or --platform", code="invalid_scope")
    if site_ref is None:
        return None, "platform"
    with cli.db.connect("app") as conn:
        site = resolve_site(conn, site_ref)
    return site.id, site.public_id


@token_group.command("list")
@click.option("--site", "site_ref", default=None, help="Site UUID or public id.")
@click.option("--platform", is_flag=True, help="Platform-wide tokens.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked and expired tokens.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def token_list(cli: CliContext, site_ref: str | None, platform: bool, include_revoked: bool, as_json: bool) -> None:
    """List user tokens by prefix (never the secret); `token revoke` accepts the printed prefix."""
    site_id, _ = _scope(cli, site_ref, platform)
    now = _now(cli)
    with cli.db.connect("app") as conn:
        keys = list_keys(conn, site_id=site_id, roles=USER_ROLES, now=now, include_revoked=include_revoked)
    _print_keys(keys, now, as_json)


@token_group.command("revoke")
@click.argument("token")
@pass_cli
def token_revoke(cli: CliContext, token: str) -> None:
    """Revoke a user token by its id, its secret or its prefix as `token list` prints it."""
    with cli.db.transaction("app") as conn:
        revoked = revoke_key(conn, token, now=_now(cli), actor=_actor(), roles=USER_ROLES)
    click.echo(f"revoked {revoked.role} token {revoked.id} ({revoked.key_prefix}…)")


@click.group("key")
def key_group() -> None:
    """Ingest keys (and, for `revoke`, any key or token)."""


@key_group.command("create")
@click.option("--site", "site_ref", required=True, help="Site UUID or public id.")
@click.option("--label", default=None, help="A note to recognise the key by.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def key_create(cli: CliContext, site_ref: str, label: str | None, as_json: bool) -> None:
    """Create another ingest key for a site and print it (shown once, stored hashed)."""
    with cli.db.transaction("app") as conn:
        site = resolve_site(conn, site_ref)
        key, secret = issue_key(conn, site_id=site.id, role="ingest", label=label)
    result = {"ingest_key": secret, "key_id": str(key.id), "key_prefix": key.key_prefix, "site_id": str(site.id)}
    if as_json:
        echo_json(result)
        return
    for name, value in result.items():
        click.echo(f"{name}: {value}")
    click.echo("keep the ingest key now: it is stored hashed and cannot be shown again", err=True)


@key_group.command("list")
@click.option("--site", "site_ref", required=True, help="Site UUID or public id.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked and expired keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def key_list(cli: CliContext, site_ref: str, include_revoked: bool, as_json: bool) -> None:
    """List a site's ingest keys by prefix (never the secret)."""
    site_id, _ = _scope(cli, site_ref, False)
    now = _now(cli)
    with cli.db.connect("app") as conn:
        keys = list_keys(conn, site_id=site_id, roles=("ingest",), now=now, include_revoked=include_revoked)
    _print_keys(keys, now, as_json)


@key_group.command("rotate")
@click.argument("key")
@click.option(
    "--overlap",
    default=DEFAULT_ROTATION_OVERLAP,
    show_default=True,
    help="How long the old key keeps working next to the new one (s, m, h, d; at most 30d).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_cli
def key_rotate(cli: CliContext, key: str, overlap: str, as_json: bool) -> None:
    """Replace an ingest key: a new key now, the old one working until the overlap ends."""
    window = parse_duration(overlap)
    with cli.db.transaction("app") as conn:
        new, secret, old = rotate_key(conn, key, now=_now(cli), overlap=window, actor=_actor())
    result = {
        "ingest_key": secret,
        "key_id": str(new.id),
        "key_prefix": new.key_prefix,
        "old_key_id": str(old.id),
        "old_key_expires_at": old.expires_at.isoformat() if old.expires_at else None,
    }
    if as_json:
        echo_json(result)
        return
    for name, value in result.items():
        click.echo(f"{name}: {value}")
    click.echo("keep the new ingest key now: it is stored hashed and cannot be shown again", err=True)


@key_group.command("revoke")
@click.argument("key")
@pass_cli
def key_revoke(cli: CliContext, key: str) -> None:
    """Revoke a key by its id, its secret or its prefix as `key list` prints it; at once."""
    with cli.db.transaction("app") as conn:
        revoked = revoke_key(conn, key, now=_now(cli), actor=_actor())
    click.echo(f"revoked {revoked.role} key {revoked.id} ({revoked.key_prefix}…)")


def register(main: click.Group) -> None:
    for group in (site_group, token_group, key_group):
        main.add_command(group)
