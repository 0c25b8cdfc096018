"""Command-line interface: ``flask --app wsgi ...``."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
from cryptography.fernet import Fernet
from flask import Flask, current_app

from app.cli_startup import startup_command
from app.errors import ServiceError
from app.models import Node, Site, User
from app.scheduler import JOBS, find_job
from app.services import (
    backup,
    certificates,
    deployments,
    discovery,
    jobs,
    keys,
    node_actions,
    nodes,
    sites,
    users,
)


def register(app: Flask) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(keys_cli)
    app.cli.add_command(nodes_cli)
    app.cli.add_command(sites_cli)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(certs_cli)
    app.cli.add_command(backup_cli)
    app.cli.add_command(startup_command)
    app.cli.add_command(worker_command)


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


def _admin(username: str | None) -> User:
    try:
        return users.acting_admin(username)
    except ServiceError as error:
        raise click.ClickException(error.message) from None


def _node(name: str, as_admin: str | None) -> Node:
    try:
        return nodes.get_node_by_name(_admin(as_admin), name)
    except ServiceError as error:
        raise click.ClickException(error.message) from None


def _site(domain: str, as_admin: str | None) -> Site:
    try:
        return sites.get_site_by_domain(_admin(as_admin), domain)
    except ServiceError as error:
        raise click.ClickException(error.message) from None


def _report(rollout_id: int, timeout: float) -> None:
    rollout = deployments.wait(rollout_id, timeout=timeout)
    for deployment in rollout.deployments:
        line = f"{deployment.node_name}: {deployment.status.value}"
        click.echo(line + (f" ({_shown(deployment.error)})" if deployment.error else ""))
    click.echo(f"deployment {rollout.id}: {rollout.status.value}")
    if rollout.status.value != "succeeded":
        raise click.ClickException(_shown(rollout.error or "not finished in time"))


ADMIN_OPTION = click.option("--as", "as_admin", help="administrator to act as "
                                                     "(default: the first one)")


@click.group("sites", help="Sites and their deployment.")
def sites_cli() -> None:
    pass


@sites_cli.command("deploy")
@click.argument("domain")
@click.option("--canary", help="node of the pool to deploy first")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
@ADMIN_OPTION
def sites_deploy(domain: str, canary: str | None, timeout: float, as_admin: str | None) -> None:
    """Deploy DOMAIN to every active node of its pool and wait for the outcome."""
    site = _site(domain, as_admin)
    try:
        rollout = deployments.deploy_site(_admin(as_admin), site.id, canary_node=canary)
    except ServiceError as error:
        _fail(error)
        return
    _report(rollout.id, timeout)


@nodes_cli.command("versions")
@click.argument("name")
@ADMIN_OPTION
def nodes_versions(name: str, as_admin: str | None) -> None:
    """List NAME's config versions, newest first (* marks the live one)."""
    node = _node(name, as_admin)
    page = deployments.list_versions(_admin(as_admin), node.id, per_page=200)
    live = deployments.current_version(node.id)
    statuses = deployments.version_statuses([v.id for v in page.items])
    for version in page.items:
        mark = "*" if live is not None and live.id == version.id else " "
        click.echo(f"{mark} v{version.version}  {version.created_at:%Y-%m-%d %H:%M:%S}  "
                   f"{statuses.get(version.id, '-'):<11}  {version.file_count} files  "
                   f"{version.sha256[:12]}")


@nodes_cli.command("rollback")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
@ADMIN_OPTION
def nodes_rollback(name: str, version: int, timeout: float, as_admin: str | None) -> None:
    """Deploy NAME's config version VERSION again, exactly as it was."""
    node = _node(name, as_admin)
    try:
        row = deployments.get_version_number(_admin(as_admin), node.id, version)
        rollout = deployments.rollback_node(_admin(as_admin), node.id, row.id)
    except ServiceError as error:
        _fail(error)
        return
    _report(rollout.id, timeout)


@nodes_cli.command("drift")
@click.argument("name")
@ADMIN_OPTION
def nodes_drift(name: str, as_admin: str | None) -> None:
    """Compare NAME's files with its last deployed version (exit 1 when they differ)."""
    node = deployments.check_drift(_admin(as_admin), _node(name, as_admin).id)
    click.echo(_shown(node.drift_details) if node.drift_details else "no drift")
    if node.drifted:
        raise click.ClickException(f"node {name} has drifted")


@nodes_cli.command("check")
@click.argument("name")
@ADMIN_OPTION
def nodes_check(name: str, as_admin: str | None) -> None:
    """Check SSH, the proxy process and HTTP on NAME (exit 1 when one fails)."""
    node = node_actions.check_node(_admin(as_admin), _node(name, as_admin).id)
    result = node.last_check or {}
    for part, outcome in result.items():
        click.echo(f"{part}: {'ok' if outcome['ok'] else 'FAILED'} ({_shown(outcome['detail'])})")
    if not all(outcome["ok"] for outcome in result.values()):
        raise click.ClickException(f"node {name} is not healthy")


@click.group("jobs", help="Background jobs (the scheduler runs them in the app's workers).")
def jobs_cli() -> None:
    pass


@jobs_cli.command("run")
@click.argument("name", type=click.Choice([job.name for job in JOBS]))
def jobs_run(name: str) -> None:
    """Run job NAME once, now, in the foreground; recorded like a scheduled run.  It
    does not wait for the scheduler's lease: every job is safe to run twice."""
    job = find_job(name)
    assert job is not None  # click checked the name
    run = jobs.run_recorded(job.name, job.work, jobs.runner_id(jobs.CLI_RUNNER))
    click.echo(f"{name}: {run.status.value} ({_shown(run.detail)})")
    if run.status.value != "succeeded":
        raise click.ClickException(f"job {name} failed")


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.argument("celery_options", nargs=-1, type=click.UNPROCESSED)
def worker_command(celery_options: tuple[str, ...]) -> None:
    """Run a worker of the task engine (Celery on CELERY_BROKER_URL): it runs the
    rollouts, certificate orders and jobs that the app's processes hand over.
    CELERY_OPTIONS go to `celery worker` (--concurrency N, --pool prefork|threads,
    --hostname NAME...)."""
    from app import tasks  # Celery is imported only where the task engine is on

    try:
        tasks.run_worker(current_app._get_current_object(),  # type: ignore[attr-defined]
                         celery_options)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None


@click.group("certs", help="TLS certificates of the sites.")
def certs_cli() -> None:
    pass


@certs_cli.command("renew")
def certs_renew() -> None:
    """Obtain missing certificates and renew those due (what the scheduler does
    hourly), in the foreground."""
    click.echo(certificates.renew_due())


@certs_cli.command("issue")
@click.argument("domain")
@click.option("--timeout", default=600.0, show_default=True, help="seconds to wait")
@ADMIN_OPTION
def certs_issue(domain: str, timeout: float, as_admin: str | None) -> None:
    """Issue or renew DOMAIN's certificate now and wait until it is deployed."""
    site = _site(domain, as_admin)
    try:
        cert = certificates.request_certificate(_admin(as_admin), site.id)
    except ServiceError as error:
        _fail(error)
        return
    cert = certificates.wait(cert.id, timeout=timeout)
    click.echo(f"{domain}: {cert.status.value}"
               + (f", valid until {certificates.aware(cert.not_after):%Y-%m-%d %H:%M} UTC"
                  if cert.not_after else ""))
    if cert.status.value != "valid":
        raise click.ClickException(_shown(cert.last_error or "not finished in time"))


@click.group("backup", help="Backups of the whole state: secrets stay encrypted and the "
                            "keys (ENCRYPTION_KEYS) are never in them; keep those apart.")
def backup_cli() -> None:
    pass


def _print_manifest(manifest: backup.Manifest) -> None:
    click.echo(f"made {manifest.created_at:%Y-%m-%d %H:%M:%S} UTC from {manifest.database}, "
               f"schema revision {manifest.schema_revision}: {manifest.rows} rows in "
               f"{len(manifest.tables)} tables")
    keys_used = ", ".join(f"{fp} ({n})" for fp, n in sorted(manifest.keys.items()))
    click.echo(f"secrets: {manifest.secrets}, encrypted with key(s) {keys_used or '-'}"
               + (f"; {manifest.unreadable} under no key of the instance that made it"
                  if manifest.unreadable else ""))


def _progress(verbose: bool) -> Callable[[str, int], None] | None:
    return (lambda name, rows: click.echo(f"  {name}: {rows} rows")) if verbose else None


@backup_cli.command("create")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-v", "--verbose", is_flag=True, help="print each table as it is written")
def backup_create(path: str, verbose: bool) -> None:
    """Write a backup of the whole state to PATH (a new file, readable by you only).
    Safe while the app runs: every table is read at one moment."""
    try:
        manifest = backup.write_backup_file(None, path, progress=_progress(verbose))
    except ServiceError as error:
        raise click.ClickException(error.message) from None
    click.echo(f"wrote {path}")
    _print_manifest(manifest)


@backup_cli.command("verify")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def backup_verify(path: str) -> None:
    """Check PATH as a restore would (format, schema, keys, every part's SHA-256)
    without touching the database."""
    click.echo(f"this instance's keys: {', '.join(backup.instance_key_fingerprints())}")
    try:
        manifest = backup.verify_backup(path)
    except ServiceError as error:
        raise click.ClickException(error.message) from None
    _print_manifest(manifest)
    click.echo("ok: this instance can restore it")


@backup_cli.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True,
              help="replace a database that is not empty (stop every app process first)")
@click.option("-v", "--verbose", is_flag=True, help="print each table as it is restored")
def backup_restore(path: str, force: bool, verbose: bool) -> None:
    """Replace the whole state with PATH's.  Without --force the database must be
    empty (no account, no node); an empty one is migrated to the backup's schema
    first and to this application's after.  Nothing changes unless every check passes."""
    allow = backup.Allow.ANYTHING if force else backup.Allow.EMPTY
    try:
        report = backup.restore_backup(None, path, allow=allow, progress=_progress(verbose))
    except ServiceError as error:
        raise click.ClickException(error.message) from None
    _print_manifest(report.manifest)
    click.echo(f"restored; the database is at schema revision {report.schema_revision}")
