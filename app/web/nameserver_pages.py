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
    requested = nameservers.request_check(current_actor(), site_id)
    if requested.started:
        flash("Nameserver check started: the results appear below when it ends.", "success")
    else:
        flash("A nameserver check of this site is already running: its results appear "
              "below when it ends.", "success")
    return redirect(url_for(f"{request.blueprint}.site_detail", site_id=site_id,
                            _anchor="nameservers"))
