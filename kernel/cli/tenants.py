"""``revkernel site create|list``, ``token create``, ``key revoke``."""

from __future__ import annotations

import click

from kernel.cli.context import CliContext, echo_json, pass_cli
from kernel.clock import SystemClock
from kernel.errors import InputError
from kernel.tenants import (
    BILLING_MODES,
    USER_ROLES,
    create_site,
    issue_key,
    list_sites,
    parse_multiplier,
    resolve_site,
    revoke_key,
)

__all__ = ["register"]


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
    help="Requests per minute before 429 rate_limited.",
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
    type=click.Choice(["key", "public"]),
    default="key",
    show_default=True,
    help="key: Bearer ingest key required; public: keyless trackers from an allowed origin.",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    help="Browser origin allowed to ingest (repeat).",
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
        echo_json([{**s.__dict__, "hard_cap": s.hard_cap} for s in sites])
        return
    for s in sites:
        limit = f"L={s.monthly_limit} H={s.hard_cap} {'soft' if s.soft_limit_enabled else 'hard'}"
        click.echo(f"{s.id}  {s.public_id:<20} {s.billing_mode:<8} {limit}  {s.name}")


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
        "role": key.role,
        "site_id": str(key.site_id) if key.site_id else None,
    }
    if as_json:
        echo_json(result)
        return
    for name, value in result.items():
        click.echo(f"{name}: {value if value is not None else 'platform'}")


@click.group("key")
def key_group() -> None:
    """Ingest keys and user tokens."""


@key_group.command("revoke")
@click.argument("key")
@pass_cli
def key_revoke(cli: CliContext, key: str) -> None:
    """Revoke a key by its id, its secret or its unique prefix; it stops working at once."""
    with cli.db.transaction("app") as conn:
        revoked = revoke_key(conn, key, now=SystemClock().now())
    click.echo(f"revoked {revoked.role} key {revoked.id} ({revoked.key_prefix}…)")


def register(main: click.Group) -> None:
    for group in (site_group, token_group, key_group):
        main.add_command(group)
