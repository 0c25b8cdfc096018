"""Admin panel views: parse a form, call a service, render or redirect.

A missing object raises ``NotFound`` from the service and becomes the 404 page;
refused actions (``Forbidden``, ``Conflict``) are flashed; invalid input goes back
under the form's fields with status 422.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for
from wtforms import SelectChoice

from app.admin import bp, monitoring_views, nameserver_views
from app.admin.forms import (
    BackendPolicyForm,
    BlockForm,
    DnsProviderForm,
    DomainGrantForm,
    NodeForm,
    PoolForm,
    SearchForm,
    UserForm,
)
from app.admin.nameserver_forms import NameserverSettingsForm
from app.errors import Conflict, Forbidden, ValidationError
from app.extensions import limit_deploy_requests
from app.forms import AcmeSettingsForm, SecuritySettingsForm, form_status
from app.models import User
from app.scheduler import JOBS
from app.services import (
    audit,
    deployments,
    dns_providers,
    domain_grants,
    explain,
    node_actions,
    nodes,
    settings,
    sites,
    two_factor,
    users,
)
from app.services import dashboard as dashboard_service
from app.services import jobs as job_service
from app.web import current_actor, site_pages
from app.web.filters import (
    AuditFilters,
    JobRunFilters,
    NodeFilters,
    RolloutFilters,
    SiteFilters,
    UserFilters,
)
from app.web.object_views import delete_object, edit_object


def _page_number() -> int:
    return request.args.get("page", 1, type=int) or 1


def _pool_names(actor: User) -> list[str]:
    return [pool.name for pool in nodes.list_pools(actor)]


def _refused(error: Forbidden | Conflict, endpoint: str, **values: Any) -> Any:
    flash(error.message, "error")
    return redirect(url_for(endpoint, **values))


@bp.get("/")
def dashboard() -> Any:
    overview = dashboard_service.admin_overview(
        current_actor(), heartbeat=current_app.config["SCHEDULER_HEARTBEAT"])
    return render_template("admin/dashboard_overview.html", overview=overview,
                           names=audit.object_names(overview.recent),
                           **nameserver_views.dashboard_context())


# ----------------------------------------------------------------------------- users


@bp.get("/users", endpoint="users")
def user_list() -> Any:
    actor = current_actor()
    filters, criteria = UserFilters.read(request.args)
    if criteria is None:
        return render_template("admin/user_list.html", filters=filters, page=None), 422
    page = users.list_users(actor, page=_page_number(), **criteria)
    return render_template("admin/user_list.html", filters=filters, page=page,
                           site_counts=users.site_counts([u.id for u in page.items]))


@bp.route("/users/new", methods=["GET", "POST"])
def user_create() -> Any:
    def shown_once(created: tuple[User, str | None]) -> Any:
        user, generated = created
        if generated:
            return _show_password(user, generated, f"User {user.username} created", "")
        return None

    return edit_object(
        UserForm(creating=True), lambda form: users.create_user(current_actor(), form.to_data()),
        "admin/user_form.html", user=None, next_url=url_for(".users"),
        message=lambda created: f"User {created[0].username} created.", answer=shown_once)


@bp.route("/users/<int:user_id>/edit", methods=["GET", "POST"])
def user_edit(user_id: int) -> Any:
    actor = current_actor()
    user = users.get_user(actor, user_id)
    return edit_object(
        UserForm(creating=False, own_account=user.id == actor.id, data=UserForm.initial(user)),
        lambda form: users.update_user(actor, user_id, form.to_data()),
        "admin/user_form.html", **_user_context(user),
        message=lambda _: f"User {user.username} saved.", next_url=url_for(".users"),
        refused=(Forbidden,), refused_url=url_for(".user_edit", user_id=user_id))


def _user_context(user: User, grant_form: DomainGrantForm | None = None) -> dict[str, Any]:
    """The user page besides its form: the domains given to the user."""
    return {"user": user, "grants": domain_grants.list_grants(current_actor(), user.id),
            "grant_form": grant_form or DomainGrantForm(formdata=None, prefix="grant")}


@bp.post("/users/<int:user_id>/domains")
def user_domain_grant(user_id: int) -> Any:
    actor = current_actor()
    user = users.get_user(actor, user_id)
    grant_form = DomainGrantForm(prefix="grant")
    if grant_form.validate_on_submit():
        try:
            row, in_use = domain_grants.grant(actor, user_id, grant_form.name.data)
        except ValidationError as exc:
            grant_form.add_service_errors(exc.fields)
        else:
            flash(f"{row.name} is {user.username}'s: no other client may claim names with "
                  "it, under it or over it.", "success")
            if in_use:
                flash(f"Other clients' sites use names under it already (they keep them): "
                      f"{', '.join(in_use)}.", "warning")
            return redirect(url_for(".user_edit", user_id=user_id))
    form = UserForm(creating=False, own_account=user.id == actor.id, data=UserForm.initial(user))
    return render_template("admin/user_form.html", form=form,
                           **_user_context(user, grant_form)), 422


@bp.post("/users/<int:user_id>/domains/<int:grant_id>/delete")
def user_domain_revoke(user_id: int, grant_id: int) -> Any:
    domain_grants.revoke(current_actor(), user_id, grant_id)
    flash("The domain is open to every client again.", "success")
    return redirect(url_for(".user_edit", user_id=user_id))


@bp.post("/users/<int:user_id>/activate")
def user_activate(user_id: int) -> Any:
    user = users.set_active(current_actor(), user_id, True)
    flash(f"User {user.username} can sign in again.", "success")
    return redirect(url_for(".users"))


@bp.post("/users/<int:user_id>/deactivate")
def user_deactivate(user_id: int) -> Any:
    try:
        user = users.set_active(current_actor(), user_id, False)
    except Forbidden as exc:
        return _refused(exc, ".users")
    flash(f"User {user.username} is deactivated and signed out.", "success")
    return redirect(url_for(".users"))


@bp.post("/users/<int:user_id>/reset-password")
def user_reset_password(user_id: int) -> Any:
    user, password = users.reset_password(current_actor(), user_id)
    return _show_password(user, password, f"New password for {user.username}",
                          "Their existing sessions have ended.")


@bp.post("/users/<int:user_id>/reset-two-factor")
def user_reset_two_factor(user_id: int) -> Any:
    try:
        user = two_factor.reset(current_actor(), user_id)
    except (Conflict, Forbidden) as exc:
        return _refused(exc, ".users")
    flash(f"Two-factor sign-in of {user.username} is off: they sign in with the password "
          "and may set it up again.", "success")
    return redirect(url_for(".users"))


def _show_password(user: Any, password: str, heading: str, note: str) -> Any:
    """Rendered, not flashed: a password must not travel in the (signed, readable)
    session cookie, nor be cached."""
    page = render_template("admin/user_password.html", user=user, password=password,
                           heading=heading, note=note)
    return page, 200, {"Cache-Control": "no-store"}


@bp.post("/users/<int:user_id>/delete")
def user_delete(user_id: int) -> Any:
    return delete_object(lambda: users.delete_user(current_actor(), user_id),
                         message="User deleted.", next_url=url_for(".users"),
                         refused=(Forbidden, Conflict))


# ----------------------------------------------------------------------------- nodes


@bp.get("/nodes", endpoint="nodes")
def node_list() -> Any:
    actor = current_actor()
    filters, criteria = NodeFilters.read(request.args, pool=_pool_names(actor))
    if criteria is None:
        return render_template("admin/node_list.html", filters=filters, page=None), 422
    page = nodes.list_nodes(actor, page=_page_number(), **criteria)
    return render_template("admin/node_list.html", filters=filters, page=page)


@bp.route("/nodes/new", methods=["GET", "POST"])
def node_create() -> Any:
    actor = current_actor()
    return edit_object(
        NodeForm(pools=_pool_names(actor), creating=True),
        lambda form: nodes.create_node(actor, form.to_data()), "admin/node_form.html",
        node=None, message=lambda node: f"Node {node.name} added.", next_url=url_for(".nodes"))


@bp.route("/nodes/<int:node_id>/edit", methods=["GET", "POST"])
def node_edit(node_id: int) -> Any:
    actor = current_actor()
    node = nodes.get_node(actor, node_id)
    return edit_object(
        NodeForm(pools=_pool_names(actor), creating=False, data=NodeForm.initial(node)),
        lambda form: nodes.update_node(actor, node_id, form.to_data()), "admin/node_form.html",
        node=node, message=lambda _: f"Node {node.name} saved.", next_url=url_for(".nodes"))


@bp.get("/nodes/<int:node_id>")
def node_detail(node_id: int) -> Any:
    actor = current_actor()
    node = nodes.get_node(actor, node_id)
    versions = deployments.list_versions(actor, node_id, page=_page_number(), per_page=20)
    current = deployments.current_version(node.id)
    return render_template("admin/node_detail.html", node=node, versions=versions,
                           statuses=deployments.version_statuses([v.id for v in versions.items]),
                           current=current, fingerprint=node_actions.fingerprint_or_none,
                           explain_check=explain.check_failure,
                           rollback_summaries={v.id: deployments.rollback_summary(current, v)
                                               for v in versions.items},
                           **monitoring_views.node_metrics_context(actor, node_id))


@bp.get("/nodes/<int:node_id>/versions/<int:version_id>")
def node_version(node_id: int, version_id: int) -> Any:
    actor = current_actor()
    version = deployments.get_version(actor, node_id, version_id)
    return render_template("admin/node_version.html", node=version.node, version=version,
                           files=deployments.version_files(version))


@bp.get("/nodes/<int:node_id>/diff")
def node_diff(node_id: int) -> Any:
    actor = current_actor()
    node = nodes.get_node(actor, node_id)
    old = request.args.get("from", type=int)
    new = request.args.get("to", type=int)
    if old is None or new is None:
        flash("Choose two versions to compare.", "error")
        return redirect(url_for(".node_detail", node_id=node_id))
    diff = deployments.diff_versions(actor, node_id, old, new)
    return render_template("admin/node_diff.html", node=node, diff=diff)


def _node_action(node_id: int, action: Any, done: str | Callable[[Any], tuple[str, str]]) -> Any:
    """Run a node action and flash its outcome; ``done`` is the message, or a function
    of the action's result giving the message and its category (an action that ran
    may still have found the node unhealthy)."""
    try:
        result = action()
    except (Conflict, ValidationError) as exc:
        flash(exc.message + "".join(f" {v}" for v in exc.fields.values()), "error")
    else:
        message, category = done(result) if callable(done) else (done, "success")
        flash(message, category)
    return redirect(url_for(".node_detail", node_id=node_id))


def _check_outcome(node: Any) -> tuple[str, str]:
    failed = [part for part, outcome in (node.last_check or {}).items() if not outcome["ok"]]
    if not failed:
        return f"Node {node.name} is healthy: SSH, the proxy and HTTP answer.", "success"
    names = {"ssh": "SSH", "service": "the proxy process", "http": "HTTP"}
    return (f"Node {node.name} failed its check ({', '.join(names.get(p, p) for p in failed)}):"
            " see the results below.", "error")


@bp.post("/nodes/<int:node_id>/check")
def node_check(node_id: int) -> Any:
    return _node_action(node_id, lambda: node_actions.check_node(current_actor(), node_id),
                        _check_outcome)


@bp.post("/nodes/<int:node_id>/prepare")
def node_prepare(node_id: int) -> Any:
    steps: list[str] = []
    result = _node_action(node_id, lambda: steps.extend(node_actions.prepare_node(current_actor(),
                                                                                  node_id)),
                          "Node prepared.")
    for step in steps:
        flash(step, "info")
    return result


@bp.post("/nodes/<int:node_id>/drift")
def node_drift(node_id: int) -> Any:
    return _node_action(node_id, lambda: deployments.check_drift(current_actor(), node_id),
                        "Drift check finished.")


@bp.post("/nodes/<int:node_id>/host-key")
def node_accept_host_key(node_id: int) -> Any:
    return _node_action(node_id, lambda: node_actions.accept_host_key(current_actor(), node_id),
                        "New host key accepted and pinned.")


@bp.post("/nodes/<int:node_id>/deploy")
@limit_deploy_requests
def node_deploy(node_id: int) -> Any:
    try:
        rollout = deployments.deploy_nodes(current_actor(), [node_id])
    except Conflict as exc:
        return _refused(exc, ".node_detail", node_id=node_id)
    return redirect(url_for(".deployment_detail", rollout_id=rollout.id))


@bp.post("/nodes/<int:node_id>/rollback")
@limit_deploy_requests
def node_rollback(node_id: int) -> Any:
    version_id = request.form.get("version", type=int)
    if version_id is None:
        flash("Choose a version to roll back to.", "error")
        return redirect(url_for(".node_detail", node_id=node_id))
    rollout = deployments.rollback_node(current_actor(), node_id, version_id)
    return redirect(url_for(".deployment_detail", rollout_id=rollout.id))


@bp.post("/nodes/<int:node_id>/enable")
def node_enable(node_id: int) -> Any:
    node = nodes.set_enabled(current_actor(), node_id, True)
    flash(f"Node {node.name} enabled.", "success")
    return redirect(url_for(".nodes"))


@bp.post("/nodes/<int:node_id>/disable")
def node_disable(node_id: int) -> Any:
    node = nodes.set_enabled(current_actor(), node_id, False)
    flash(f"Node {node.name} disabled: it receives no more deployments.", "success")
    return redirect(url_for(".nodes"))


@bp.post("/nodes/<int:node_id>/drain")
def node_drain(node_id: int) -> Any:
    node = nodes.drain_node(current_actor(), node_id)
    flash(f"Node {node.name} is draining: it keeps serving but receives no deployments.",
          "success")
    return redirect(url_for(".nodes"))


@bp.post("/nodes/<int:node_id>/delete")
def node_delete(node_id: int) -> Any:
    return delete_object(lambda: nodes.delete_node(current_actor(), node_id),
                         message="Node deleted.", next_url=url_for(".nodes"), refused=(Conflict,))


# ----------------------------------------------------------------------------- pools


@bp.get("/pools", endpoint="pools")
def pool_list() -> Any:
    filters = SearchForm(request.args)
    return render_template("admin/pool_list.html", filters=filters,
                           pools=nodes.list_pools(current_actor(), filters.q.data or None),
                           stats=nodes.pool_stats())


@bp.route("/pools/new", methods=["GET", "POST"])
def pool_create() -> Any:
    return edit_object(
        PoolForm(), lambda form: nodes.create_pool(current_actor(), *form.to_args()),
        "admin/pool_form.html", pool=None, message=lambda pool: f"Pool {pool.name} created.",
        next_url=url_for(".pools"))


@bp.route("/pools/<int:pool_id>/edit", methods=["GET", "POST"])
def pool_edit(pool_id: int) -> Any:
    actor = current_actor()
    pool = nodes.get_pool(actor, pool_id)
    return edit_object(
        PoolForm(data={"name": pool.name, "description": pool.description}),
        lambda form: nodes.update_pool(actor, pool_id, *form.to_args()),
        "admin/pool_form.html", pool=pool, message=lambda _: "Pool saved.",
        next_url=url_for(".pools"))


@bp.post("/pools/<int:pool_id>/delete")
def pool_delete(pool_id: int) -> Any:
    return delete_object(lambda: nodes.delete_pool(current_actor(), pool_id),
                         message="Pool deleted.", next_url=url_for(".pools"), refused=(Conflict,))


# ----------------------------------------------------------------------------- DNS providers


@bp.get("/dns-providers", endpoint="dns_providers")
def dns_provider_list() -> Any:
    filters = SearchForm(request.args)
    page = dns_providers.list_providers(current_actor(), page=_page_number(),
                                        q=filters.q.data or None)
    return render_template("admin/dns_provider_list.html", page=page, filters=filters)


@bp.route("/dns-providers/new", methods=["GET", "POST"])
def dns_provider_create() -> Any:
    return edit_object(
        DnsProviderForm(creating=True),
        lambda form: dns_providers.create_provider(current_actor(), form.to_data()),
        "admin/dns_provider_form.html", provider=None,
        message=lambda provider: f"DNS provider {provider.name} added for zone {provider.zone}.",
        next_url=url_for(".dns_providers"))


@bp.route("/dns-providers/<int:provider_id>/edit", methods=["GET", "POST"])
def dns_provider_edit(provider_id: int) -> Any:
    actor = current_actor()
    provider = dns_providers.get_provider(actor, provider_id)
    return edit_object(
        DnsProviderForm(creating=False, data=DnsProviderForm.initial(provider)),
        lambda form: dns_providers.update_provider(actor, provider_id, form.to_data()),
        "admin/dns_provider_form.html", provider=provider, conflict_field="zone",
        message=lambda _: f"DNS provider {provider.name} saved.",
        next_url=url_for(".dns_providers"))


@bp.post("/dns-providers/<int:provider_id>/check")
def dns_provider_check(provider_id: int) -> Any:
    ok, detail = dns_providers.check_provider(current_actor(), provider_id)
    flash(detail, "success" if ok else "error")
    return redirect(url_for(".dns_providers"))


@bp.post("/dns-providers/<int:provider_id>/delete")
def dns_provider_delete(provider_id: int) -> Any:
    return delete_object(lambda: dns_providers.delete_provider(current_actor(), provider_id),
                         message="DNS provider deleted.", next_url=url_for(".dns_providers"),
                         refused=(Conflict,))


# ----------------------------------------------------------------------------- sites

# A site's own pages are the client's (app.web.site_pages) plus its owner and blocking.
site_pages.register(bp, site_pages.Panel(
    admin=True, home="Sites", home_endpoint="admin.sites",
    detail_template="admin/site_detail.html",
    created=lambda site: f"Site {site.domain} created for {site.owner.username}.",
    deploy_refusals=(Conflict, ValidationError),
    detail_context=lambda: {"block_form": BlockForm()}))


@bp.get("/sites", endpoint="sites")
def site_list() -> Any:
    actor = current_actor()
    owners = [SelectChoice(u.id, u.username) for u in sites.owner_choices(actor)]
    filters, criteria = SiteFilters.read(request.args, pool=_pool_names(actor),
                                         owner_id=owners)
    if criteria is None:
        return render_template("admin/site_list.html", filters=filters, page=None), 422
    page = sites.list_sites(actor, page=_page_number(), **criteria)
    return render_template("admin/site_list.html", filters=filters, page=page)


@bp.get("/deployments", endpoint="deployments")
def deployment_list() -> Any:
    filters, criteria = RolloutFilters.read(request.args)
    if criteria is None:
        return render_template("admin/deployment_list.html", filters=filters, page=None), 422
    page = deployments.list_rollouts(current_actor(), page=_page_number(), **criteria)
    return render_template("admin/deployment_list.html", page=page, filters=filters)


@bp.route("/settings", methods=["GET", "POST"])
def settings_page() -> Any:
    actor = current_actor()
    current = settings.get_acme_settings(actor)
    return edit_object(
        AcmeSettingsForm(data=current),
        lambda form: settings.update_acme_settings(actor, form.to_data()), "admin/settings.html",
        **_settings_context(actor, current), message=lambda _: "Settings saved.",
        next_url=url_for(".settings_page"))


def _settings_context(actor: User, current: dict[str, Any],
                      policy_form: BackendPolicyForm | None = None,
                      nameserver_form: NameserverSettingsForm | None = None
                      ) -> dict[str, Any]:
    """The settings page besides the ACME form, with the one form that was submitted
    as it came back."""
    policy = settings.get_backend_policy(actor)
    return {
        **nameserver_views.settings_context(nameserver_form),
        "current": current, "policy": policy,
        "policy_form": policy_form or BackendPolicyForm(
            formdata=None, data=BackendPolicyForm.initial(policy), prefix="policy"),
        "security_form": SecuritySettingsForm(
            formdata=None, data=settings.get_security_settings(actor))}


@bp.post("/settings/backend-policy")
def backend_policy_settings() -> Any:
    actor = current_actor()
    form = BackendPolicyForm(prefix="policy")
    if form.validate_on_submit():
        try:
            settings.update_backend_policy(actor, form.to_data(
                settings.get_backend_policy(actor)))
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            flash("Backend address policy saved.", "success")
            return redirect(url_for(".settings_page"))
    current = settings.get_acme_settings(actor)
    return render_template("admin/settings.html",
                           form=AcmeSettingsForm(formdata=None, data=current),
                           **_settings_context(actor, current, form)), form_status(form)


@bp.post("/settings/security")
def security_settings() -> Any:
    form = SecuritySettingsForm()
    if form.validate_on_submit():
        settings.update_security_settings(
            current_actor(), {"require_admin_two_factor": bool(form.require_admin_two_factor.data)})
        flash("Sign-in settings saved.", "success")
    return redirect(url_for(".settings_page"))


@bp.post("/sites/<int:site_id>/block")
def site_block(site_id: int) -> Any:
    actor = current_actor()
    site = sites.get_site(actor, site_id)
    form = BlockForm()
    if form.validate_on_submit():
        try:
            sites.set_blocked(actor, site_id, True, (form.blocked_reason.data or "").strip())
        except ValidationError as exc:
            form.add_service_errors(exc.fields)
        else:
            flash(f"Site {site.domain} is blocked.", "success")
            return redirect(url_for(".site_detail", site_id=site_id))
    return site_pages.site_page(site, block_form=form), 422


@bp.post("/sites/<int:site_id>/unblock")
def site_unblock(site_id: int) -> Any:
    site = sites.set_blocked(current_actor(), site_id, False, "")
    flash(f"Site {site.domain} is unblocked.", "success")
    return redirect(url_for(".site_detail", site_id=site_id))


# ----------------------------------------------------------------------------- audit


@bp.get("/audit", endpoint="audit")
def audit_list() -> Any:
    actor = current_actor()
    filters, criteria = AuditFilters.read(request.args, action=audit.known_actions())
    if criteria is None:
        return render_template("admin/audit_list.html", filters=filters, page=None), 422
    page = audit.list_entries(actor, page=_page_number(), **criteria)
    return render_template("admin/audit_list.html", filters=filters, page=page,
                           names=audit.object_names(page.items))


# ----------------------------------------------------------------------------- jobs


@bp.get("/jobs", endpoint="jobs")
def job_list() -> Any:
    actor = current_actor()
    schedule = [(j.name, j.interval(current_app)) for j in JOBS]
    names = [name for name, _ in schedule]
    filters, criteria = JobRunFilters.read(request.args, job=names)
    page = (job_service.list_runs(actor, page=_page_number(), **criteria)
            if criteria is not None else None)
    return render_template(
        "admin/job_list.html", page=page, schedule=schedule, state=job_service.scheduler_state(),
        latest=job_service.latest_runs(actor, names),
        filters=filters), 200 if criteria is not None else 422
