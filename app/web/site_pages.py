"""A site's pages, written once for both panels: the site's page, its form, deleting
and deploying it, its certificate, and following its deployments.

Each panel registers them on its blueprint with a :class:`Panel` saying what differs
there; endpoint names are the same in both (``admin.site_detail``,
``client.site_detail``), so links built with ``url_for(".site_detail")`` stay in the
panel a page was asked from.  Services scope every object to the signed-in user: in
the client panel another tenant's site is not found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from app.errors import Conflict, ServiceError
from app.extensions import limit_certificate_requests, limit_deploy_requests
from app.forms import SiteForm, form_status
from app.models import Site, User
from app.services import deployments, explain, nodes, rendering, sites
from app.web import certificate_pages, current_actor, nameserver_pages, uptime_pages
from app.web.deployment_pages import deployment_detail, deployment_events
from app.web.object_views import delete_object, edit_object


@dataclass(frozen=True)
class Panel:
    """What a panel's site pages say beyond the client's.

    :param admin: the administrators' panel: sites show and take their owner.
    :param home: the label of the site list the pages lead back to.
    :param home_endpoint: that list's endpoint.
    :param detail_template: the site's page (the admin's extends the shared one).
    :param created: the message after a site is created.
    :param deploy_refusals: errors of a deploy request flashed on the site's page
        (others answer the error page).
    :param detail_context: the site page's variables beyond the shared ones.
    """

    admin: bool
    home: str
    home_endpoint: str
    detail_template: str
    created: Callable[[Site], str]
    deploy_refusals: tuple[type[ServiceError], ...]
    detail_context: Callable[[], dict[str, Any]] = field(default=dict)


_PANELS: dict[str, Panel] = {}


def register(bp: Blueprint, panel: Panel) -> None:
    """Add the site pages to ``bp``, at the URLs and endpoint names both panels use."""
    _PANELS[bp.name] = panel
    for rule, view, methods in (
        ("/sites/new", site_create, ["GET", "POST"]),
        ("/sites/<int:site_id>", site_detail, ["GET"]),
        ("/sites/<int:site_id>/edit", site_edit, ["GET", "POST"]),
        ("/sites/<int:site_id>/delete", site_delete, ["POST"]),
        ("/sites/<int:site_id>/deploy", site_deploy, ["POST"]),
        ("/sites/<int:site_id>/certificate/issue", site_certificate_issue, ["POST"]),
        ("/sites/<int:site_id>/certificate", site_certificate_upload, ["POST"]),
        ("/sites/<int:site_id>/nameservers/check", nameserver_pages.site_nameservers_check,
         ["POST"]),
        ("/deployments/<int:rollout_id>", deployment_detail, ["GET"]),
        ("/deployments/<int:rollout_id>/events", deployment_events, ["GET"]),
    ):
        bp.add_url_rule(rule, view.__name__, view, methods=methods)


def _panel() -> Panel:
    return _PANELS[request.blueprint or ""]


def site_page(site: Site, upload_form: Any = None, **context: Any) -> str:
    """The site's page; ``upload_form`` and ``context`` bring a refused form back
    with its errors."""
    actor, panel = current_actor(), _panel()
    return render_template(
        panel.detail_template, panel=panel, site=site,
        **{**panel.detail_context(), **context},
        **certificate_pages.context(site, request.blueprint or "", upload_form),
        **nameserver_pages.context(site),
        **uptime_pages.context(actor, site),
        settings=sites.site_to_dict(site, admin=panel.admin),
        preview=rendering.preview(actor, site.id, request.args.get("engine")),
        recent=deployments.list_rollouts(actor, site_id=site.id, per_page=5),
        last_error=explain.site_failure(site.last_deploy_error, admin=actor.is_admin,
                                        refused=site.refused_version == site.config_version))


def _site_form(actor: User, panel: Panel, **kwargs: Any) -> SiteForm:
    owners = sites.owner_choices(actor) if panel.admin else None
    return SiteForm(pools=nodes.pool_choices(actor), owners=owners, **kwargs)


def site_detail(site_id: int) -> ResponseReturnValue:
    return site_page(sites.get_site(current_actor(), site_id))


def site_create() -> ResponseReturnValue:
    actor, panel = current_actor(), _panel()
    # An administrator's new site belongs to them, or to the owner whose sites they list.
    owner = {"data": {"owner_id": request.args.get("owner_id", actor.id, type=int)}}
    return edit_object(
        _site_form(actor, panel, **(owner if panel.admin else {})),
        lambda form: sites.create_site(actor, form.to_data()), "shared/site_form.html",
        panel=panel, site=None, capabilities=rendering.capability_matrix(),
        check=lambda data: sites.check_site(actor, data), message=panel.created,
        next_url=lambda site: url_for(".site_detail", site_id=site.id),
        refused=(Conflict,), refused_url=url_for(panel.home_endpoint))


def site_edit(site_id: int) -> ResponseReturnValue:
    actor, panel = current_actor(), _panel()
    site = sites.get_site(actor, site_id)
    here = url_for(".site_detail", site_id=site_id)
    return edit_object(
        _site_form(actor, panel,
                   data=SiteForm.initial(sites.site_to_dict(site, admin=panel.admin))),
        lambda form: sites.update_site(actor, site_id, form.to_data()), "shared/site_form.html",
        panel=panel, site=site, capabilities=rendering.capability_matrix(),
        check=lambda data: sites.check_site(actor, data, site_id),
        message=lambda _: "Site saved.", next_url=here, refused=(Conflict,), refused_url=here)


def site_delete(site_id: int) -> ResponseReturnValue:
    return delete_object(lambda: sites.delete_site(current_actor(), site_id),
                         message="Site deleted.", next_url=url_for(_panel().home_endpoint))


@limit_deploy_requests
def site_deploy(site_id: int) -> ResponseReturnValue:
    panel = _panel()
    canary = (request.form.get("canary_node") or None) if panel.admin else None
    try:
        rollout = deployments.deploy_site(current_actor(), site_id, canary_node=canary)
    except panel.deploy_refusals as exc:
        flash(exc.message + "".join(f" {v}" for v in exc.fields.values()), "error")
        return redirect(url_for(".site_detail", site_id=site_id))
    return redirect(url_for(".deployment_detail", rollout_id=rollout.id))


@limit_certificate_requests
def site_certificate_issue(site_id: int) -> ResponseReturnValue:
    return certificate_pages.issue(current_actor(), site_id, request.blueprint or "")


@limit_deploy_requests
def site_certificate_upload(site_id: int) -> ResponseReturnValue:
    actor = current_actor()
    form, done = certificate_pages.upload(actor, site_id, request.blueprint or "")
    return done or (site_page(sites.get_site(actor, site_id), form), form_status(form))
