"""The Backups page's forms: an upload to check, then its confirmation."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, HiddenField, SubmitField
from wtforms.validators import DataRequired

from app.forms import ServiceForm


class RestoreUploadForm(ServiceForm):
    file = FileField(
        "Backup file", validators=[FileRequired("Choose a backup file.")],
        description="A <code>.tar</code> file from <em>Download a backup</em>, "
                    "<code>flask --app wsgi backup create</code> or the scheduled backups. "
                    "It is checked completely; nothing changes before you confirm.")
    submit = SubmitField("Check backup")


class RestoreConfirmForm(FlaskForm):
    token = HiddenField(validators=[DataRequired()])
    confirm = BooleanField(
        "Replace every account, node, site, certificate and record of this instance with "
        "the backup's. I will sign in again with an account from the backup.",
        validators=[DataRequired("Tick this box to replace everything.")])
    submit = SubmitField("Replace everything with this backup")


class RestoreCancelForm(FlaskForm):
    token = HiddenField(validators=[DataRequired()])
    submit = SubmitField("Cancel")
