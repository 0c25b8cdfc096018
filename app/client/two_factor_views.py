"""The profile's two-factor sign-in: set-up with a QR code, new recovery codes,
turning it off."""

from __future__ import annotations

from typing import Any

import segno
from flask import flash, redirect, render_template, url_for

from app.client import bp
from app.client.forms import EnrolForm, ProofForm
from app.errors import ValidationError
from app.forms import form_status
from app.services import two_factor
from app.web import current_actor


def _qr_image(uri: str) -> str:
    """The otpauth URI as a data: SVG image (the CSP allows data: images, no inline
    script or style): dark on white whatever the theme, with the quiet zone scanners
    need."""
    return str(segno.make(uri, error="m").svg_data_uri(scale=4, border=4, dark="#000",
                                                       light="#fff"))


def _grouped(secret: str) -> str:
    """The secret in groups of four, easier to type into an app by hand."""
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def _manage_page(codes_form: ProofForm, off_form: ProofForm) -> Any:
    status = max(form_status(codes_form), form_status(off_form))
    actor = current_actor()
    return render_template("client/two_factor_manage.html", codes_form=codes_form,
                           off_form=off_form,
                           codes_left=two_factor.recovery_codes_left(actor)), status


def _recovery_codes_page(codes: list[str], heading: str) -> Any:
    """Shown once and never cached: the codes exist nowhere else in plain text."""
    return (render_template("client/recovery_codes.html", codes=codes, heading=heading), 200,
            {"Cache-Control": "no-store"})


@bp.route("/profile/two-factor", methods=["GET", "POST"], endpoint="two_factor")
def two_factor_page() -> Any:
    """Set-up while two-factor sign-in is off, management while it is on."""
    actor = current_actor()
    if two_factor.is_enabled(actor):
        return _manage_page(ProofForm(prefix="codes", formdata=None),
                            ProofForm(prefix="off", formdata=None))
    enrolment = two_factor.begin_enrolment(actor)
    form = EnrolForm()
    if form.validate_on_submit():
        try:
            codes = two_factor.confirm_enrolment(actor, form.code.data or "")
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            return _recovery_codes_page(codes, "Two-factor sign-in is on")
    return render_template("client/two_factor_setup.html", form=form,
                           secret=_grouped(enrolment.secret),
                           qr_image=_qr_image(enrolment.uri)), form_status(form)



@bp.post("/profile/two-factor/recovery-codes")
def two_factor_recovery_codes() -> Any:
    form = ProofForm(prefix="codes")
    if form.validate_on_submit():
        try:
            codes = two_factor.regenerate_recovery_codes(current_actor(), form.proof.data or "")
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            return _recovery_codes_page(codes, "New recovery codes")
    return _manage_page(form, ProofForm(prefix="off", formdata=None))


@bp.post("/profile/two-factor/off")
def two_factor_disable() -> Any:
    form = ProofForm(prefix="off")
    if form.validate_on_submit():
        try:
            two_factor.disable(current_actor(), form.proof.data or "")
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            flash("Two-factor sign-in is off: signing in asks for your password only.",
                  "success")
            return redirect(url_for(".profile"))
    return _manage_page(ProofForm(prefix="codes", formdata=None), form)
