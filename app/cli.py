"""Command-line interface: ``flask --app wsgi ...``."""

from __future__ import annotations

import sys

import click
from cryptography.fernet import Fernet
from flask import Flask, current_app

from app.errors import ServiceError
from app.services import discovery, keys, users


def register(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(keys_cli)
    app.cli.add_command(nodes_cli)


def _fail(error: ServiceError) -> None:
    details = "; ".join(f"{k}: {v}" for k, v in error.fields.items())
    raise click.ClickException(f"{error.message}{' (' + details + ')' if details else ''}")


@click.group("users", help="Manage accounts.")
def users_cli() -> None:
    pass


@users_cli.command("create")
@click.option("--username", required=True)
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["admin", "client"]), default="client", show_default=True)
@click.option("--max-sites", type=int, default=None, help="Site quota (clients).")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input instead of generating one.")
def users_create(username: str, email: str, role: str, max_sites: int | None,
                 password_stdin: bool) -> None:
    """Create an account.  Without --password-stdin a password is generated and
    printed once; there is no default password."""
    data: dict[str, object] = {"username": username, "email": email, "role": role}
    if max_sites is not None:
        data["max_sites"] = max_sites
    if password_stdin:
        data["password"] = sys.stdin.readline().rstrip("\r\n")
    try:
        user, generated = users.create_user(None, data)
    except ServiceError as error:
        _fail(error)
        return
    click.echo(f"created {user.role.value} '{user.username}'")
    if generated:
        click.echo(f"password: {generated}")


@users_cli.command("list")
@click.option("--role", type=click.Choice(["admin", "client"]), default=None)
def users_list(role: str | None) -> None:
    """Print one account per line (username, role, active)."""
    for user in users.all_users(role):
        state = "active" if user.is_active else "inactive"
        click.echo(f"{user.username}\t{user.role.value}\t{state}")


@click.group("keys", help="Encryption keys for secrets at rest.")
def keys_cli() -> None:
    pass


@keys_cli.command("generate")
def keys_generate() -> None:
    """Print a new Fernet key; put it first in ENCRYPTION_KEYS, then run rotate."""
    click.echo(Fernet.generate_key().decode())


@keys_cli.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every secret under the first key of ENCRYPTION_KEYS."""
    counts = keys.rotate_all()
    for column, count in counts.items():
        click.echo(f"{column}: {count} re-encrypted")
    click.echo(f"done: {sum(counts.values())} secret(s) now under the newest key")


@click.group("nodes", help="Proxy node inventory.")
def nodes_cli() -> None:
    pass


@nodes_cli.command("discover")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
def nodes_discover(path: str | None) -> None:
    """Create or update nodes (and pools) from a nodes.yaml inventory; PATH defaults to
    NODES_FILE.  Valid entries are applied even when others are invalid; the exit
    status is non-zero if any entry was invalid."""
    path = path or current_app.config["NODES_FILE"]
    try:
        report = discovery.discover_nodes(path)
    except ServiceError as error:
        _fail(error)
        return
    for name in report.pools_created:
        click.echo(f"pool {name}: created")
    for name in report.created:
        click.echo(f"node {name}: created")
    for name, changed in report.updated.items():
        click.echo(f"node {name}: updated ({', '.join(changed)})")
    for name in report.unchanged:
        click.echo(f"node {name}: unchanged")
    for entry in report.invalid:
        label = f"{entry.section}[{entry.index}]"
        if entry.name is not None:
            label += f" {_shown(entry.name)}"
        click.echo(f"{label}: invalid")
        for field, reason in entry.fields.items():
            click.echo(f"    {_shown(field)}: {_shown(reason)}")
    click.echo(f"{len(report.created)} created, {len(report.updated)} updated, "
               f"{len(report.unchanged)} unchanged, {len(report.invalid)} invalid")
    if not report.ok:
        raise click.ClickException(
            f"{len(report.invalid)} invalid entr{'y' if len(report.invalid) == 1 else 'ies'} "
            f"in {path}; the valid ones were applied"
        )


def _shown(text: str) -> str:
    """Values from an invalid entry may hold newlines or escape codes that would forge or hide
    output lines; show them escaped and bounded."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return escaped if len(escaped) <= 80 else escaped[:77] + "..."
