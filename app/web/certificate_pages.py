"""The certificate panel of a site's page, shared by the admin and client panels
(each passes its own blueprint name for the URLs)."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, url_for

from app.errors import Conflict, ValidationError
from app.forms import CertificateUploadForm
from app.models import Site, User
from app.services import certificates


def context(site: Site, panel: str, upload_form: CertificateUploadForm | None = None
            ) -> dict[str, Any]:
    """What ``client/_certificate.html`` needs."""
    return {
        "certificate": certificates.certificate_to_dict(site),
        "cert_issue_url": url_for(f"{panel}.site_certificate_issue", site_id=site.id),
        "cert_upload_url": url_for(f"{panel}.site_certificate_upload", site_id=site.id),
        "upload_form": upload_form or CertificateUploadForm(formdata=None),
    }


def issue(actor: User, site_id: int, panel: str) -> Any:
    try:
        cert = certificates.request_certificate(actor, site_id)
    except (Conflict, ValidationError) as exc:
        flash(exc.message + "".join(f": {v}" for v in exc.fields.values()), "error")
    else:
        flash("Certificate issued; it is being deployed to the pool's nodes."
              if cert.status.value == "valid" else
              "Certificate requested: its status below changes when the CA has answered.",
              "success")
    return redirect(url_for(f"{panel}.site_detail", site_id=site_id) + "#certificate")


def upload(actor: User, site_id: int, panel: str) -> tuple[CertificateUploadForm, Any]:
    """Returns the form (with errors when refused) and the redirect on success."""
    form = CertificateUploadForm()
    if form.validate_on_submit():
        try:
            certificates.upload_certificate(actor, site_id, form.chain_pem.data or "",
                                            form.key_pem.data or "")
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            flash("Certificate uploaded; it is being deployed.", "success")
            return form, redirect(url_for(f"{panel}.site_detail", site_id=site_id)
                                  + "#certificate")
    return form, None
