"""Login and logout."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from app.extensions import (
    SIGN_IN_SCOPE,
    SIGN_IN_USER_SCOPE,
    limiter,
    sign_in_limit,
    sign_in_username,
)
from app.services import users

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])
    remember = BooleanField("Keep me signed in")


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
@limiter.shared_limit(sign_in_limit, scope=SIGN_IN_SCOPE, methods=["POST"])
@limiter.shared_limit(sign_in_limit, scope=SIGN_IN_USER_SCOPE, methods=["POST"],
                      key_func=sign_in_username)
def login() -> Any:
    if current_user.is_authenticated:
        return redirect(url_for("main.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = users.authenticate(form.username.data or "", form.password.data or "")
        if user is None:
            form.password.errors.append("Invalid username or password.")
        else:
            users.start_session(user, request.remote_addr or "", request.user_agent.string)
            login_user(user, remember=bool(form.remember.data))
            users.record_login(user)
            return redirect(_safe_next(request.args.get("next")) or url_for("main.index"))
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
@login_required
def logout() -> Any:
    users.end_session(current_user._get_current_object())
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))
