"""Forms only the client panel uses (the site form is shared: ``app.forms``)."""

from __future__ import annotations

from typing import Any

from wtforms import (
    BooleanField,
    EmailField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
)
from wtforms.validators import DataRequired, EqualTo

from app.forms import CheckboxesField, ServiceForm
from app.models import NotificationChannel
from app.services import notifiers


class TokenForm(ServiceForm):
    name = StringField("Name", validators=[DataRequired()],
                       description="What the token is for, e.g. deploy-script.")
    expires_in_days = IntegerField(
        "Expires after (days)", default=90, validators=[DataRequired()],
        description="From 1 to 3650 days; make a new token before it ends.",
    )
    read_only = BooleanField("Read only", description="The token may look (GET) but change "
                             "nothing: for monitoring and reports.")
    submit = SubmitField("Create token")


class EmailForm(ServiceForm):
    email = EmailField("New email", validators=[DataRequired()],
                       description="We send a link to it; your address changes when you "
                                   "open the link, within 24 hours.")
    submit_email = SubmitField("Send confirmation link")


class PasswordForm(ServiceForm):
    current_password = PasswordField("Current password", validators=[DataRequired()])
    new_password = PasswordField("New password", validators=[DataRequired()],
                                 description="At least 12 characters.")
    confirm_password = PasswordField(
        "Repeat the new password",
        validators=[DataRequired(), EqualTo("new_password", message="does not match")],
    )
    submit_password = SubmitField("Change password")


class EnrolForm(ServiceForm):
    code = StringField("Code from the app", validators=[DataRequired()],
                       description="The 6 digits the app shows for this account.")
    submit = SubmitField("Turn on two-factor sign-in")


class ProofForm(ServiceForm):
    """Changing two-factor sign-in asks again who is at the keyboard."""

    proof = PasswordField("Your password or a code from the app", validators=[DataRequired()])


class ChannelForm(ServiceForm):
    """A notification channel.  Kind and target are chosen once (another target is
    another channel); the secret is write-only: never shown, and left blank on edit it
    keeps the stored one."""

    name = StringField("Name", description="What the channel is, e.g. phone or ops chat.")
    kind = SelectField("Kind", choices=[SelectChoice(kind, notifier.label)
                                        for kind, notifier in notifiers.NOTIFIERS.items()])
    target = StringField("Target", description="; ".join(
        f"{n.label}: {n.target_label[0].lower()}{n.target_label[1:]}"
        for n in notifiers.NOTIFIERS.values()) + ".")
    secret = PasswordField("Secret", description="; ".join(
        f"{n.label}: {n.secret_label[0].lower()}{n.secret_label[1:]}"
        for n in notifiers.NOTIFIERS.values() if n.secret_label)
        + ". Stored encrypted, never shown again.")
    events = CheckboxesField("Events", choices=[SelectChoice(event, words)
                                      for event, words in notifiers.EVENTS.items()],
                             default=list(notifiers.DEFAULT_EVENTS))
    enabled = BooleanField("Enabled", default=True)
    submit = SubmitField("Save")

    def __init__(self, *args: Any, channel: NotificationChannel | None = None,
                 **kwargs: Any) -> None:
        if channel is not None:
            kwargs.setdefault("data", {"name": channel.name, "events": channel.events,
                                       "enabled": channel.enabled})
        super().__init__(*args, **kwargs)
        if channel is None:
            self.submit.label.text = "Add channel"
        else:
            # Kind and target stay; the secret field only replaces the stored one.
            del self.kind
            del self.target
            if not notifiers.NOTIFIERS[channel.kind.value].secret_label:
                del self.secret
            else:
                self.secret.label.text = notifiers.NOTIFIERS[channel.kind.value].secret_label
                self.secret.description = "Write-only. Leave blank to keep the stored one."

    def to_input(self) -> notifiers.ChannelInput:
        """What the service takes; fields this form does not have are left as they are."""
        kind = self._fields.get("kind")
        target = self._fields.get("target")
        secret = self._fields.get("secret")
        return notifiers.ChannelInput(
            name=self.name.data or "",
            kind=kind.data if kind is not None else None,
            target=(target.data or "") if target is not None else None,
            secret=(secret.data or None) if secret is not None else None,
            enabled=bool(self.enabled.data), events=list(self.events.data or []))
