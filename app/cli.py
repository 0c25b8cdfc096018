"""Command-line interface: ``flask --app wsgi ...``."""

from __future__ import annotations

import sys

import click
from cryptography.fernet import Fernet
from flask import Flask

from app.errors import ServiceError
from app.services import keys, users


def register(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(keys_cli)


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
