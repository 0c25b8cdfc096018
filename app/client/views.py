"""Client panel views: parse a form, call a service, render or redirect.

Services scope every read to the actor, so another tenant's site id raises
``NotFound`` and the app's error handler answers 404.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import logout_user

from app.client import bp
from app.client.forms import ChannelForm, EmailForm, PasswordForm, TokenForm
from app.errors import (
    Conflict,
    Forbidden,
    Gone,
    MailFailed,
    NotFound,
    ServiceError,
    ValidationError,
)
from app.extensions import limiter, requesting_user
from app.forms import form_status
from app.services import email_change, notifiers, sites, tokens, users
from app.web import current_actor, site_pages
from app.web.filters import SiteFilters


@bp.get("/")
def dashboard() -> Any:
    actor = current_actor()
    filters, criteria = SiteFilters.read(request.args, only=SiteFilters.CLIENT)
    if criteria is None:
        return render_template("client/site_list.html", filters=filters, page=None,
                               summaries={}, quota=actor.max_sites,
                               total=sites.count_sites(actor)), 422
    page = sites.list_sites(actor, page=request.args.get("page", 1, type=int),
                            owner_id=actor.id, **criteria)
    return render_template("client/site_list.html", filters=filters, page=page,
                           summaries=sites.site_summaries(actor, page.items),
                           quota=actor.max_sites, total=sites.count_sites(actor))


# A site's own pages, as the administrators' panel has them too (app.web.site_pages).
site_pages.register(bp, site_pages.Panel(
    admin=False, home="My sites", home_endpoint="client.dashboard",
    detail_template="shared/site_detail.html",
    created=lambda site: f"Site {site.domain} created. Deploy it to put it live.",
    deploy_refusals=(Conflict,)))


@bp.route("/tokens", methods=["GET", "POST"], endpoint="tokens")
def tokens_page() -> Any:
    actor = current_actor()
    form = TokenForm()
    if form.validate_on_submit():
        try:
            token, plaintext = tokens.create_token(
                actor, (form.name.data or "").strip(), form.expires_in_days.data,
                read_only=bool(form.read_only.data),
            )
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            # Rendered, not flashed: the plaintext never travels in the session cookie.
            response = render_template("client/token_created.html", token=token,
                                       plaintext=plaintext)
            return response, 200, {"Cache-Control": "no-store"}
    search = (request.args.get("q") or "").strip()[:64]
    return render_template("client/token_list.html", form=form, search=search,
                           tokens=tokens.list_tokens(actor, search or None)), form_status(form)


@bp.post("/tokens/<int:token_id>/revoke")
def token_revoke(token_id: int) -> Any:
    tokens.revoke_token(current_actor(), token_id)
    flash("Token revoked: programs using it can no longer sign in.", "success")
    return redirect(url_for(".tokens"))


def profile_context(email_form: EmailForm | None = None,
                    password_form: PasswordForm | None = None,
                    channel_form: ChannelForm | None = None) -> dict[str, Any]:
    """What the profile page shows; the forms not given are fresh (not filled from
    another form's submission)."""
    actor = current_actor()
    return {"email_form": email_form or EmailForm(formdata=None),
            "password_form": password_form or PasswordForm(formdata=None),
            "channel_form": channel_form or ChannelForm(formdata=None),
            "sessions": users.list_sessions(actor),
            "self_service_email": email_change.self_service(),
            "this_session": users.current_session_id(actor),
            "channels": notifiers.channel_summaries(actor)}


def _profile_page(email_form: EmailForm, password_form: PasswordForm) -> Any:
    status = max(form_status(email_form), form_status(password_form))
    return render_template("client/profile_form.html",
                           **profile_context(email_form, password_form)), status


@bp.get("/profile")
def profile() -> Any:
    return _profile_page(EmailForm(), PasswordForm())


@bp.post("/profile/sessions/<int:session_id>/end")
def profile_end_session(session_id: int) -> Any:
    users.revoke_session(current_actor(), session_id)
    flash("That session is signed out.", "success")
    return redirect(url_for(".profile"))


def _email_change_limit() -> str:
    return str(current_app.config["EMAIL_CHANGE_LIMIT"])


def _confirmation_link(token: str) -> str:
    """Links in mail start from PUBLIC_URL when it is set: the request's Host header is
    whatever the requester sent."""
    base = current_app.config["PUBLIC_URL"] or request.host_url
    return base.rstrip("/") + url_for(".profile_email_confirm", token=token)


@bp.post("/profile/email")
@limiter.limit(_email_change_limit, key_func=requesting_user,
               error_message="address change requests")
def profile_email() -> Any:
    form = EmailForm()
    if form.validate_on_submit():
        try:
            address = email_change.request_change(current_actor(), form.email.data or "",
                                                  _confirmation_link)
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        except MailFailed as exc:
            form.form_errors.append(exc.message)
            page, _ = _profile_page(form, PasswordForm(formdata=None))
            return page, exc.status
        else:
            flash(f"We sent a link to {address}; your address changes when you open it "
                  f"(within {email_change.LINK_HOURS} hours).", "success")
            return redirect(url_for(".profile"))
    return _profile_page(form, PasswordForm(formdata=None))


@bp.get("/profile/email/confirm/<token>")
def profile_email_confirm(token: str) -> Any:
    """The link from the mail asks before it changes anything: mail scanners open
    links, and a person should see which address the account is about to take."""
    try:
        pending = email_change.read_link(current_actor(), token)
    except (NotFound, Gone, Forbidden, Conflict) as exc:
        return _link_refused(exc)
    return render_template("client/email_confirm.html", pending=pending, token=token)


@bp.post("/profile/email/confirm/<token>")
def profile_email_confirm_apply(token: str) -> Any:
    try:
        user = email_change.confirm_change(current_actor(), token)
    except (NotFound, Gone, Forbidden, Conflict) as exc:
        return _link_refused(exc)
    flash(f"Your e-mail address is now {user.email}.", "success")
    return redirect(url_for(".profile"))


def _link_refused(error: ServiceError) -> Any:
    return render_template("client/email_confirm.html", pending=None,
                           refused=error.message), error.status


@bp.post("/profile/password")
def profile_password() -> Any:
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            users.change_password(current_actor(), form.current_password.data or "",
                                  form.new_password.data or "")
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            # The password change bumped the session version: this session is over too.
            logout_user()
            flash("Your password was changed. Sign in with the new password.", "success")
            return redirect(url_for("auth.login"))
    return _profile_page(EmailForm(formdata=None), form)
