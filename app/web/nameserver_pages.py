"""The nameserver panel of a site's page and its "check now" button, shared by the
admin and client panels (each registers the button's route on its own blueprint)."""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from app.extensions import limiter, requesting_user
from app.models import Site
from app.services import nameservers
from app.web import current_actor

# Each check asks the resolvers about every name of the site: counted per user.
limit_nameserver_checks = limiter.shared_limit(
    lambda: str(current_app.config["NAMESERVER_CHECK_LIMIT"]), scope="nameserver-check",
    key_func=requesting_user, error_message="nameserver checks")


def context(site: Site) -> dict[str, Any]:
    """What ``shared/_nameservers.html`` needs."""
    return {"nameservers": nameservers.site_nameservers(current_actor(), site.id)}


@limit_nameserver_checks
def site_nameservers_check(site_id: int) -> ResponseReturnValue:
    result = nameservers.check_site(current_actor(), site_id)
    messages = {
        "ok": ("Nameservers checked: every name is served by the expected nameservers.",
               "success"),
        "mismatch": ("Nameservers checked: some names are served by other nameservers "
                     "than expected.", "error"),
        "error": ("Nameservers checked: some names could not be checked; the reasons are "
                  "below.", "error"),
        "unchecked": ("The site has no names to check.", "success"),
    }
    flash(*messages[result.status])
    return redirect(url_for(f"{request.blueprint}.site_detail", site_id=site_id,
                            _anchor="nameservers"))
