"""The administrators' alert pages: the alerts and their history (shared with the
client panel, :mod:`app.web.alert_pages`), the rules that raise them, and the
maintenance silences that hold their notices back."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for

from app.admin import bp
from app.admin.alert_forms import AlertRuleForm, SilenceEditForm, SilenceForm
from app.errors import Conflict
from app.services import alerts, nodes
from app.web import alert_pages, current_actor
from app.web.alert_filters import SilenceFilters
from app.web.object_views import delete_object, edit_object

alert_pages.register(bp)


def _pools() -> list[str]:
    return [pool.name for pool in nodes.list_pools(current_actor())]


def _page_number() -> int:
    return request.args.get("page", 1, type=int) or 1


# ----------------------------------------------------------------------------- rules


@bp.get("/alerts/rules")
def alert_rules() -> Any:
    page = alerts.list_rules(current_actor(), page=_page_number())
    return render_template("admin/alert_rule_list.html", page=page,
                           pools=alerts.pool_names({rule.pool_id for rule in page.items}),
                           kinds=alerts.KINDS, recommended=len(alerts.RECOMMENDED))


@bp.post("/alerts/rules/recommended")
def alert_rules_recommended() -> Any:
    added = alerts.add_recommended_rules(current_actor())
    if added:
        flash(f"{len(added)} recommended rule(s) added: "
              f"{', '.join(rule.name for rule in added)}.", "success")
    else:
        flash("Every recommended rule is there already.", "info")
    return redirect(url_for(".alert_rules"))


@bp.route("/alerts/rules/new", methods=["GET", "POST"])
def alert_rule_create() -> Any:
    return edit_object(
        AlertRuleForm(pools=_pools(), creating=True),
        lambda form: alerts.create_rule(current_actor(), form.to_data()),
        "admin/alert_rule_form.html", rule=None, kinds=alerts.KINDS,
        message=lambda rule: f"Rule {rule.name} added: the next evaluation applies it.",
        next_url=url_for(".alert_rules"))


@bp.route("/alerts/rules/<int:rule_id>/edit", methods=["GET", "POST"])
def alert_rule_edit(rule_id: int) -> Any:
    actor = current_actor()
    rule = alerts.get_rule(actor, rule_id)
    pool = alerts.pool_names({rule.pool_id}).get(rule.pool_id or 0)
    return edit_object(
        AlertRuleForm(pools=_pools(), creating=False, data=AlertRuleForm.initial(rule, pool)),
        lambda form: alerts.update_rule(actor, rule_id, form.to_data()),
        "admin/alert_rule_form.html", rule=rule, kinds=alerts.KINDS,
        message=lambda saved: f"Rule {saved.name} saved.", next_url=url_for(".alert_rules"))


@bp.post("/alerts/rules/<int:rule_id>/delete")
def alert_rule_delete(rule_id: int) -> Any:
    return delete_object(lambda: alerts.delete_rule(current_actor(), rule_id),
                         message="Rule deleted, with its alerts.",
                         next_url=url_for(".alert_rules"))


# ----------------------------------------------------------------------------- silences


@bp.get("/alerts/silences")
def alert_silences() -> Any:
    filters, criteria = SilenceFilters.read(request.args)
    if criteria is None:
        return render_template("admin/alert_silence_list.html", filters=filters,
                               page=None), 422
    page = alerts.list_silences(current_actor(), page=_page_number(), **criteria)
    return render_template("admin/alert_silence_list.html", filters=filters, page=page)


@bp.route("/alerts/silences/new", methods=["GET", "POST"])
def alert_silence_create() -> Any:
    actor = current_actor()
    # An alert's page links here with its node, pool or site filled in.
    given = {key: request.args[key] for key in ("node", "pool", "site") if key in request.args}
    form = SilenceForm(pools=_pools(), data=given) if request.method == "GET" \
        else SilenceForm(pools=_pools())
    return edit_object(
        form, lambda f: alerts.create_silence(actor, f.to_data()),
        "admin/alert_silence_form.html", silence=None,
        node_names=[node.name for node in nodes.list_nodes(actor, per_page=200).items],
        message=lambda _: "Silence added: alerts it covers send no notice until it ends.",
        next_url=url_for(".alert_silences"))


@bp.route("/alerts/silences/<int:silence_id>/edit", methods=["GET", "POST"])
def alert_silence_edit(silence_id: int) -> Any:
    actor = current_actor()
    view = alerts.get_silence_view(actor, silence_id)
    return edit_object(
        SilenceEditForm(data=SilenceEditForm.initial(view.silence)),
        lambda form: alerts.update_silence(actor, silence_id, form.to_data()),
        "admin/alert_silence_form.html", silence=view, node_names=[],
        message=lambda _: "Silence saved.", next_url=url_for(".alert_silences"))


@bp.post("/alerts/silences/<int:silence_id>/end")
def alert_silence_end(silence_id: int) -> Any:
    try:
        alerts.end_silence(current_actor(), silence_id)
    except Conflict as exc:
        flash(exc.message, "error")
    else:
        flash("Silence ended: notices it held go out at the next evaluation if they still "
              "hold.", "success")
    return redirect(url_for(".alert_silences"))


@bp.post("/alerts/silences/<int:silence_id>/delete")
def alert_silence_delete(silence_id: int) -> Any:
    return delete_object(lambda: alerts.delete_silence(current_actor(), silence_id),
                         message="Silence deleted.", next_url=url_for(".alert_silences"))
