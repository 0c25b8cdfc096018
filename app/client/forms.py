"""Forms only the client panel uses (the site form is shared: ``app.forms``)."""

from __future__ import annotations

from wtforms import (
    BooleanField,
    EmailField,
    IntegerField,
    PasswordField,
    StringField,
    SubmitField,
)
from wtforms.validators import DataRequired, EqualTo

from app.forms import ServiceForm


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
