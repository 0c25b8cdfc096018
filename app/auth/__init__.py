"""Login (a password, then a code for accounts with two-factor sign-in) and logout."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from app.errors import ValidationError
from app.forms import form_status
from app.models import User
from app.services import two_factor, users
from app.web import current_actor

bp = Blueprint("auth", __name__)

# The browser's signed session carries the pending second step under this key.
_TICKET = "two_factor_ticket"
# What an administrator held at two-factor enrolment may still reach.
_OPEN_DURING_ENROLMENT = frozenset({"static", "auth.logout", "client.two_factor", "main.health"})


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    remember = BooleanField("Keep me signed in")


class CodeForm(FlaskForm):
    code = StringField("Code", validators=[DataRequired(), Length(max=64)],
                       description="The 6 digits your authenticator app shows now, or one of "
                                   "your recovery codes.")


def _safe_next(target: str | None) -> str | None:
    """Only same-site relative paths, so the login page cannot redirect elsewhere."""
    if not target:
        return None
    parts = urlsplit(target)
    # Browsers read a backslash as a slash: "/\\evil.example" is another site.
    if (parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//")
            or "\\" in target):
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = users.authenticate(form.username.data or "", form.password.data or "")
        if user is None:
            form.password.errors.append("Invalid username or password.")
        else:
            target = _safe_next(request.args.get("next"))
            if two_factor.is_enabled(user):
                session[_TICKET] = {**two_factor.sign_in_ticket(user), "next": target,
                                    "remember": bool(form.remember.data)}
                return redirect(url_for(".second_step"))
            return _sign_in(user, bool(form.remember.data), target)
    return render_template("auth/login.html", form=form)


@bp.route("/two-factor", methods=["GET", "POST"])
def second_step() -> Any:
    """The code after the password.  Only the ticket the password step put in this
    browser's signed session leads here, for five minutes; no session exists on the
    server until the code is right, so no other page opens meanwhile."""
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    ticket = session.get(_TICKET) or {}
    user = two_factor.ticket_user(ticket)
    if user is None:
        session.pop(_TICKET, None)
        flash("Sign in with your password first; the code must follow within five minutes.",
              "warning")
        return redirect(url_for(".login"))
    form = CodeForm()
    if form.validate_on_submit():
        try:
            two_factor.verify_sign_in(user, form.code.data or "")
        except ValidationError as exc:
            form.code.errors.append(exc.fields.get("code", exc.message))
        else:
            session.pop(_TICKET, None)
            return _sign_in(user, bool(ticket.get("remember")), _safe_next(ticket.get("next")))
    return render_template("auth/two_factor.html", form=form), form_status(form)


def _sign_in(user: User, remember: bool, target: str | None) -> Any:
    """Every step passed: the server-side session starts now."""
    users.start_session(user, request.remote_addr or "", request.user_agent.string)
    login_user(user, remember=remember)
    users.record_login(user)
    return redirect(target or url_for("main.index"))


@bp.before_app_request
def hold_at_enrolment() -> Any:
    """An administrator who must use two-factor sign-in and has not set it up yet
    reaches only the set-up page and signing out.  API tokens are not held: scripts
    keep working."""
    endpoint = request.endpoint
    # Static files of the app and of its extensions (Bootstrap's) are never held.
    if (endpoint is None or endpoint in _OPEN_DURING_ENROLMENT or endpoint.endswith(".static")
            or request.path.startswith("/api/") or not current_user.is_authenticated):
        return None
    if two_factor.enrolment_required(current_user):
        flash("Administrators sign in with a second factor: set yours up to go on.", "warning")
        return redirect(url_for("client.two_factor"))
    return None


@bp.post("/logout")
@login_required
def logout() -> Any:
    users.end_session(current_actor())
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
