"""The alert pages both panels have: the list, one alert with its history,
acknowledging it, and the history of every alert.  An administrator's pages show
every alert; a client's those about their own sites (the services scope them), with
the kinds of alerts a site can have to filter by.  Endpoint names are the same in
both panels (``admin.alerts``, ``client.alerts``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from wtforms import SelectChoice

from app.errors import Conflict
from app.models import SubjectKind
from app.services import alerts
from app.web import current_actor
from app.web.alert_filters import AlertFilters

#: The kinds a client's alerts can be of (those about a site).
SITE_KINDS = [SelectChoice(kind.value, spec.label) for kind, spec in alerts.KINDS.items()
              if spec.subject == SubjectKind.SITE]


def register(bp: Blueprint) -> None:
    for rule, view, methods in (
        ("/alerts", alert_list, ["GET"]),
        ("/alerts/history", alert_history, ["GET"]),
        ("/alerts/<int:alert_id>", alert_detail, ["GET"]),
        ("/alerts/<int:alert_id>/acknowledge", alert_acknowledge, ["POST"]),
    ):
        endpoint = "alerts" if view is alert_list else view.__name__
        bp.add_url_rule(rule, endpoint, view, methods=methods)


def _page_number() -> int:
    return request.args.get("page", 1, type=int) or 1


def alert_list() -> ResponseReturnValue:
    actor = current_actor()
    if actor.is_admin:
        filters, criteria = AlertFilters.read(request.args)
    else:
        filters, criteria = AlertFilters.read(request.args, only=AlertFilters.CLIENT,
                                              kind=SITE_KINDS)
    if criteria is None:
        return render_template("shared/alert_list.html", filters=filters, page=None), 422
    page = alerts.list_alerts(actor, page=_page_number(), **criteria)
    return render_template("shared/alert_list.html", filters=filters, page=page,
                           names=alerts.subject_names(page.items))


def alert_detail(alert_id: int) -> str:
    actor = current_actor()
    alert = alerts.get_alert(actor, alert_id)
    return render_template("shared/alert_detail.html", alert=alert,
                           name=alerts.subject_names([alert]).get(
                               (alert.subject_kind, alert.subject_id), ""),
                           by=alerts.acknowledgers([alert]) if actor.is_admin else {},
                           spec=alerts.KINDS[alert.rule.kind])


def alert_acknowledge(alert_id: int) -> Any:
    try:
        alerts.acknowledge(current_actor(), alert_id)
    except Conflict as exc:
        flash(exc.message, "error")
    else:
        flash("Alert acknowledged: no more reminders until it is resolved.", "success")
    return redirect(url_for(".alert_detail", alert_id=alert_id))


def alert_history() -> str:
    actor = current_actor()
    page = alerts.list_transitions(actor, page=_page_number())
    return render_template("shared/alert_history.html", page=page,
                           names=alerts.subject_names(t.alert for t in page.items))
