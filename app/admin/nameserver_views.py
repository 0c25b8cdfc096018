"""Nameservers in the admin panel: the Settings page's Nameservers section, the zones'
own expected nameservers, and the dashboard's list of sites whose zones are served
by other nameservers than expected."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for

from app.admin import bp
from app.admin.forms import SearchForm
from app.admin.nameserver_forms import NameserverSettingsForm, ZoneNameserversForm
from app.errors import ValidationError
from app.forms import AcmeSettingsForm, form_status
from app.services import nameservers, settings
from app.web import current_actor
from app.web.object_views import delete_object, edit_object


def settings_context(form: NameserverSettingsForm | None = None) -> dict[str, Any]:
    """The Settings page's Nameservers section, with its form as submitted when it
    came back with errors."""
    current = nameservers.get_settings(current_actor())
    return {"nameserver_settings": current,
            "nameserver_form": form or NameserverSettingsForm(
                formdata=None, data=NameserverSettingsForm.initial(current), prefix="ns")}


def dashboard_context() -> dict[str, Any]:
    return {"nameserver_mismatches": nameservers.mismatched_sites(current_actor())}


@bp.post("/settings/nameservers")
def nameserver_settings() -> Any:
    actor = current_actor()
    form = NameserverSettingsForm(prefix="ns")
    if form.validate_on_submit():
        try:
            nameservers.update_settings(actor, form.to_data(nameservers.get_settings(actor)))
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            flash("Nameserver settings saved.", "success")
            return redirect(url_for(".settings_page", _anchor="nameservers"))
    # The page's other sections, as app.admin.views shows them.
    from app.admin.views import _settings_context

    current = settings.get_acme_settings(actor)
    return render_template("admin/settings.html",
                           form=AcmeSettingsForm(formdata=None, data=current),
                           **_settings_context(actor, current, nameserver_form=form)
                           ), form_status(form)


@bp.get("/nameservers/zones", endpoint="nameserver_zones")
def nameserver_zone_list() -> Any:
    filters = SearchForm(request.args)
    page = nameservers.list_zones(current_actor(), page=request.args.get("page", 1, type=int),
                                  q=filters.q.data or None)
    return render_template("admin/nameserver_zone_list.html", page=page, filters=filters)


@bp.route("/nameservers/zones/new", methods=["GET", "POST"])
def nameserver_zone_create() -> Any:
    return edit_object(
        ZoneNameserversForm(),
        lambda form: nameservers.create_zone(current_actor(), form.to_data()),
        "admin/nameserver_zone_form.html", zone=None,
        message=lambda zone: f"Expected nameservers of {zone.zone} saved.",
        next_url=url_for(".nameserver_zones"))


@bp.route("/nameservers/zones/<int:zone_id>/edit", methods=["GET", "POST"])
def nameserver_zone_edit(zone_id: int) -> Any:
    actor = current_actor()
    zone = nameservers.get_zone(actor, zone_id)
    return edit_object(
        ZoneNameserversForm(data=ZoneNameserversForm.initial(zone)),
        lambda form: nameservers.update_zone(actor, zone_id, form.to_data()),
        "admin/nameserver_zone_form.html", zone=zone,
        message=lambda saved: f"Expected nameservers of {saved.zone} saved.",
        next_url=url_for(".nameserver_zones"))


@bp.post("/nameservers/zones/<int:zone_id>/delete")
def nameserver_zone_delete(zone_id: int) -> Any:
    return delete_object(lambda: nameservers.delete_zone(current_actor(), zone_id),
                         message="Zone removed: its names are held to the list in Settings "
                                 "again.", next_url=url_for(".nameserver_zones"))
