"""The Backups page: a backup of the whole state downloaded now, the scheduled ones,
and a restore in two steps (an upload checked completely, then a confirmation).

From this page a backup replaces only an instance without nodes and sites (a new
installation, signed into with its first account): with nodes, rollouts, certificate
orders and checks of other workers could be writing to the rows being replaced, so
an instance in use is replaced from the command line with the app stopped.
"""

from __future__ import annotations

import tempfile
from typing import Any

from flask import current_app, flash, redirect, render_template, request, send_file, url_for
from flask_login import logout_user

from app.admin import bp
from app.admin.backup_forms import RestoreCancelForm, RestoreConfirmForm, RestoreUploadForm
from app.errors import Conflict, ValidationError
from app.forms import form_status
from app.scheduler import find_job
from app.services import backup
from app.web import current_actor

RESTORE_ENDPOINT = "admin.backup_restore"


@bp.url_value_preprocessor
def allow_large_backup_uploads(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A backup is larger than any other request body.  Set before anything reads
    the form (CSRF protection does, in a before_request)."""
    if endpoint == RESTORE_ENDPOINT:
        request.max_content_length = current_app.config["BACKUP_UPLOAD_MAX_BYTES"]


def _page(form: RestoreUploadForm | None = None) -> Any:
    actor = current_actor()
    job = find_job("backups")
    return render_template(
        "admin/backup_index.html", form=form or RestoreUploadForm(),
        directory=backup.backup_directory(), keep=current_app.config["BACKUP_KEEP"],
        interval=job.interval(current_app) if job else 0.0,
        stored=backup.stored_backups(actor),
        fingerprints=backup.instance_key_fingerprints())


@bp.get("/backups", endpoint="backups")
def backup_index() -> Any:
    return _page()


@bp.post("/backups/download")
def backup_download() -> Any:
    out = tempfile.TemporaryFile()
    try:
        manifest = backup.write_backup(current_actor(), out)
    except Conflict as error:
        out.close()
        flash(error.message, "error")
        return redirect(url_for(".backups"))
    out.seek(0)
    return send_file(out, mimetype="application/x-tar", as_attachment=True, max_age=0,
                     download_name=f"rpcc-backup-{manifest.created_at:%Y%m%dT%H%M%SZ}.tar")


@bp.get("/backups/files/<name>")
def backup_file(name: str) -> Any:
    path = backup.stored_backup_path(current_actor(), name)
    return send_file(path, mimetype="application/x-tar", as_attachment=True, max_age=0,
                     download_name=name)


@bp.post("/backups/restore", endpoint="backup_restore")
def backup_restore() -> Any:
    form = RestoreUploadForm()
    if form.validate_on_submit():
        try:
            staged = backup.stage_backup(current_actor(), form.file.data.stream)
        except ValidationError as error:
            form.add_service_errors(error.fields)
        except Conflict as error:
            form.form_errors.append(error.message)
        else:
            return _confirmation(staged)
    return _page(form), form_status(form)


def _confirmation(staged: backup.StagedBackup,
                  form: RestoreConfirmForm | None = None) -> Any:
    return render_template(
        "admin/backup_confirm.html", staged=staged,
        form=form or RestoreConfirmForm(formdata=None, data={"token": staged.token}),
        cancel=RestoreCancelForm(formdata=None, data={"token": staged.token}))


@bp.post("/backups/restore/confirm")
def backup_restore_confirm() -> Any:
    actor = current_actor()
    form = RestoreConfirmForm()
    token = form.token.data or ""
    try:
        if not form.validate_on_submit():
            return _confirmation(backup.staged_backup(actor, token), form), 422
        report = backup.restore_staged(actor, token)
    except (ValidationError, Conflict) as error:
        flash(error.message, "error")
        return redirect(url_for(".backups"))
    logout_user()
    flash(f"Restored the backup made {report.manifest.created_at:%Y-%m-%d %H:%M} UTC "
          f"({report.manifest.rows} rows). Sign in with an account from it.", "success")
    return redirect(url_for("auth.login"))


@bp.post("/backups/restore/cancel")
def backup_restore_cancel() -> Any:
    form = RestoreCancelForm()
    if form.validate_on_submit():
        try:
            backup.discard_staged(current_actor(), form.token.data or "")
        except ValidationError:
            pass  # an expired or forged token names no upload: nothing to discard
    flash("Nothing was restored.", "info")
    return redirect(url_for(".backups"))
