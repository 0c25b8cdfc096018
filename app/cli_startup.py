"""``flask --app wsgi startup``: what a container does before its command runs.

The image's entrypoint runs this module as ``python -m app.cli_startup`` rather than
through ``flask --app wsgi``: an app that refuses its configuration (production
without ``SECRET_KEY`` or ``ENCRYPTION_KEYS``) then says why in one line instead of
a traceback.
"""

from __future__ import annotations

import click
from flask.cli import ScriptInfo, with_appcontext

from app import create_app
from app.errors import ServiceError
from app.services import startup

HOW_TO_MAKE_AN_ADMIN = (
    "no administrator yet: set FIRST_ADMIN_USERNAME and FIRST_ADMIN_EMAIL and start "
    "again, or run: flask --app wsgi users create --username NAME --email ADDRESS "
    "--role admin")


def _waiting() -> None:
    click.echo("another instance is migrating the database: waiting for it")


@click.command("startup")
@click.option("--wait-attempts", type=click.IntRange(min=1), default=30, show_default=True,
              envvar="DB_WAIT_ATTEMPTS", show_envvar=True,
              help="connection attempts before giving up")
@click.option("--wait-interval", type=click.FloatRange(min=0), default=2.0, show_default=True,
              envvar="DB_WAIT_INTERVAL", show_envvar=True, help="seconds between attempts")
@click.option("--first-admin-username", envvar="FIRST_ADMIN_USERNAME", show_envvar=True,
              default="", help="create this administrator if there is none")
@click.option("--first-admin-email", envvar="FIRST_ADMIN_EMAIL", show_envvar=True,
              default="", help="the first administrator's e-mail address")
@with_appcontext
def startup_command(wait_attempts: int, wait_interval: float, first_admin_username: str,
                    first_admin_email: str) -> None:
    """Wait until the database answers, apply the migrations that are due (once,
    however many instances start together) and, when asked, create the first
    administrator with a generated password, printed once."""
    if first_admin_username and not first_admin_email:
        raise click.UsageError("FIRST_ADMIN_USERNAME needs FIRST_ADMIN_EMAIL too")
    try:
        startup.wait_for_database(
            wait_attempts, wait_interval,
            lambda attempt, reason: click.echo(
                f"database not ready (attempt {attempt} of {wait_attempts}): {reason}"))
        upgrade = startup.upgrade_schema(_waiting)
        if upgrade.changed:
            click.echo(f"database migrated: {upgrade.before or 'empty'} -> {upgrade.after}")
        else:
            click.echo(f"database up to date: {upgrade.after}")
        created = (startup.create_first_admin(first_admin_username, first_admin_email, _waiting)
                   if first_admin_username else None)
    except ServiceError as error:
        details = "; ".join(f"{k}: {v}" for k, v in error.fields.items())
        raise click.ClickException(error.message + (f" ({details})" if details else "")) \
            from None
    if created is not None:
        user, password = created
        click.echo(f"created the first administrator '{user.username}' with the password: "
                   f"{password}")
        click.echo("it is shown only this once: sign in, change it, and unset "
                   "FIRST_ADMIN_USERNAME")
    elif first_admin_username:
        click.echo("an administrator exists already: FIRST_ADMIN_USERNAME changes nothing")
    elif not startup.has_admin():
        click.echo(HOW_TO_MAKE_AN_ADMIN)


def main() -> None:
    try:
        app = create_app()
    except (RuntimeError, ValueError) as error:
        raise SystemExit(f"refusing to start: {error}") from None
    startup_command.main(prog_name="startup", obj=ScriptInfo(create_app=lambda: app))


if __name__ == "__main__":
    main()
