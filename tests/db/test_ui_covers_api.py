"""An administrator can do in the web UI everything the API offers.

Every API operation found in the URL map must map to the UI page or action that
does the same; a new API operation fails this test until its UI counterpart exists.
The UI actions themselves are exercised in test_admin_ui.py, test_client_ui.py and
test_notification_ui.py.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.extensions import db as _db
from app.models import Alert, Node
from app.models.base import utcnow
from app.services import alerts, dns_providers, nameservers, notifiers
from tests import factories

UI_FOR_API = {
    ("sites.Sites", "GET"): "admin.sites",
    ("sites.Sites", "POST"): "admin.site_create",
    ("sites.SiteItem", "GET"): "admin.site_detail",
    ("sites.SiteItem", "PUT"): "admin.site_edit",
    ("sites.SiteItem", "PATCH"): "admin.site_edit",
    ("sites.SiteItem", "DELETE"): "admin.site_delete",
    ("sites.SiteConfig", "GET"): "admin.site_detail",
    ("deployments.SiteDeploy", "POST"): "admin.site_deploy",
    ("certificates.SiteCertificate", "GET"): "admin.site_detail",
    ("certificates.SiteCertificate", "POST"): "admin.site_certificate_issue",
    ("certificates.SiteCertificate", "PUT"): "admin.site_certificate_upload",
    ("certificates.AcmeSettings", "GET"): "admin.settings_page",
    ("certificates.AcmeSettings", "PUT"): "admin.settings_page",
    ("settings.SecuritySettings", "GET"): "admin.settings_page",
    ("settings.SecuritySettings", "PUT"): "admin.security_settings",
    ("settings.BackendPolicy", "GET"): "admin.settings_page",
    ("settings.BackendPolicy", "PUT"): "admin.backend_policy_settings",
    ("deployments.SiteDeployments", "GET"): "admin.site_detail",
    ("deployments.Deployments", "GET"): "admin.deployments",
    ("deployments.DeploymentItem", "GET"): "admin.deployment_detail",
    ("deployments.NodeDeploy", "POST"): "admin.node_deploy",
    ("deployments.NodeVersions", "GET"): "admin.node_detail",
    ("deployments.NodeVersionItem", "GET"): "admin.node_version",
    ("deployments.NodeDiff", "GET"): "admin.node_detail",
    ("deployments.NodeRollback", "POST"): "admin.node_rollback",
    ("deployments.NodeDrift", "POST"): "admin.node_drift",
    ("nodes.NodeCheck", "POST"): "admin.node_check",
    ("nodes.NodePrepare", "POST"): "admin.node_prepare",
    ("nodes.NodeHostKey", "POST"): "admin.node_accept_host_key",
    ("nodes.Nodes", "GET"): "admin.nodes",
    ("nodes.Nodes", "POST"): "admin.node_create",
    ("nodes.NodeItem", "GET"): "admin.node_edit",
    ("nodes.NodeItem", "PUT"): "admin.node_edit",
    ("nodes.NodeItem", "PATCH"): "admin.node_edit",
    ("nodes.NodeItem", "DELETE"): "admin.node_delete",
    ("pools.Pools", "GET"): "admin.pools",
    ("pools.Pools", "POST"): "admin.pool_create",
    ("pools.PoolItem", "PUT"): "admin.pool_edit",
    ("pools.PoolItem", "DELETE"): "admin.pool_delete",
    ("dns_providers.DnsProviders", "GET"): "admin.dns_providers",
    ("dns_providers.DnsProviders", "POST"): "admin.dns_provider_create",
    ("dns_providers.DnsProviderItem", "GET"): "admin.dns_provider_edit",
    ("dns_providers.DnsProviderItem", "PUT"): "admin.dns_provider_edit",
    ("dns_providers.DnsProviderItem", "PATCH"): "admin.dns_provider_edit",
    ("dns_providers.DnsProviderItem", "DELETE"): "admin.dns_provider_delete",
    ("dns_providers.DnsProviderCheck", "POST"): "admin.dns_provider_check",
    ("users.Users", "GET"): "admin.users",
    ("users.Users", "POST"): "admin.user_create",
    ("users.UserItem", "GET"): "admin.user_edit",
    ("users.UserItem", "PUT"): "admin.user_edit",
    ("users.UserItem", "PATCH"): "admin.user_edit",
    ("users.UserItem", "DELETE"): "admin.user_delete",
    ("users.UserTwoFactor", "DELETE"): "admin.user_reset_two_factor",
    ("domains.Grants", "GET"): "admin.user_edit",
    ("domains.Grants", "POST"): "admin.user_domain_grant",
    ("domains.Grant", "DELETE"): "admin.user_domain_revoke",
    ("audit.AuditEntries", "GET"): "admin.audit",
    ("jobs.JobRuns", "GET"): "admin.jobs",
    ("alerts.Alerts", "GET"): "admin.alerts",
    ("alerts.AlertItem", "GET"): "admin.alert_detail",
    ("alerts.AlertAcknowledge", "POST"): "admin.alert_acknowledge",
    ("alert_rules.Rules", "GET"): "admin.alert_rules",
    ("alert_rules.Rules", "POST"): "admin.alert_rule_create",
    ("alert_rules.RecommendedRules", "POST"): "admin.alert_rules_recommended",
    ("alert_rules.RuleItem", "GET"): "admin.alert_rule_edit",
    ("alert_rules.RuleItem", "PATCH"): "admin.alert_rule_edit",
    ("alert_rules.RuleItem", "DELETE"): "admin.alert_rule_delete",
    ("silences.Silences", "GET"): "admin.alert_silences",
    ("silences.Silences", "POST"): "admin.alert_silence_create",
    ("silences.SilenceItem", "GET"): "admin.alert_silence_edit",
    ("silences.SilenceItem", "PATCH"): "admin.alert_silence_edit",
    ("silences.SilenceItem", "DELETE"): "admin.alert_silence_delete",
    ("silences.SilenceEnd", "POST"): "admin.alert_silence_end",
    ("metrics.NodeMetrics", "GET"): "admin.node_detail",
    ("metrics.FleetMetrics", "GET"): "admin.fleet",
    ("tokens.Tokens", "GET"): "client.tokens",
    ("tokens.Tokens", "POST"): "client.tokens",
    ("tokens.TokenItem", "DELETE"): "client.token_revoke",
    ("notification_channels.Channels", "GET"): "client.profile",
    ("notification_channels.Channels", "POST"): "client.notification_channel_create",
    ("notification_channels.Channel", "GET"): "client.notification_channel_edit",
    ("notification_channels.Channel", "PATCH"): "client.notification_channel_edit",
    ("notification_channels.Channel", "DELETE"): "client.notification_channel_delete",
    ("notification_channels.ChannelTest", "POST"): "client.notification_channel_test",
    ("notification_channels.ChannelDeliveries", "GET"): "client.notification_channel_edit",
    ("nameservers.SiteNameservers", "GET"): "admin.site_detail",
    ("nameservers.SiteNameserversCheck", "POST"): "admin.site_nameservers_check",
    ("nameservers.Zones", "GET"): "admin.nameserver_zones",
    ("nameservers.Zones", "POST"): "admin.nameserver_zone_create",
    ("nameservers.Zone", "GET"): "admin.nameserver_zone_edit",
    ("nameservers.Zone", "PUT"): "admin.nameserver_zone_edit",
    ("nameservers.Zone", "PATCH"): "admin.nameserver_zone_edit",
    ("nameservers.Zone", "DELETE"): "admin.nameserver_zone_delete",
    ("nameservers.NameserverSettings", "GET"): "admin.settings_page",
    ("nameservers.NameserverSettings", "PUT"): "admin.nameserver_settings",
    ("uptime.SiteUptime", "GET"): "admin.site_detail",
}
NOT_AN_OPERATION = {"api-docs.openapi_json"}


def _api_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint not in NOT_AN_OPERATION:
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                operations.add((rule.endpoint, method))
    return operations


def test_every_api_operation_has_a_ui_counterpart(app):
    missing = _api_operations(app) - set(UI_FOR_API)
    assert missing == set(), "add a UI page or action for these API operations"
    stale = set(UI_FOR_API) - _api_operations(app)
    assert stale == set()


def test_ui_counterparts_exist_and_answer_the_admin(app, admin, admin_client):
    site = factories.make_site(admin)
    node = factories.make_node()
    ids = {"site_id": site.id, "node_id": node.id, "user_id": admin.id, "pool_id": 1,
           "token_id": 1, "rollout_id": factories.make_rollout(site).id,
           "version_id": factories.make_version(node).id}
    ids["provider_id"] = dns_providers.create_provider(admin, {
        "name": "main", "zone": "example.com", "server": "127.0.0.1", "tsig_name": "acme-key",
        "tsig_secret": "a2V5LWtleS1rZXkta2V5LWtleS1rZXk="}).id
    ids["zone_id"] = nameservers.create_zone(admin, {
        "zone": "example.com", "nameservers": ["ns1.example.com"]}).id
    ids["channel_id"] = notifiers.create_channel(admin, notifiers.ChannelInput(
        name="mail", kind="email", target="admin@example.com")).id
    ids["rule_id"] = alerts.create_rule(admin, {"name": "drift", "kind": "drift"}).id
    ids["silence_id"] = alerts.create_silence(admin, {
        "pool": "default", "ends_at": utcnow() + timedelta(hours=1)}).id
    _db.session.get(Node, node.id).drifted = True
    _db.session.commit()
    alerts.evaluate()
    ids["alert_id"] = _db.session.scalar(select(Alert.id))
    endpoints = {rule.endpoint: rule for rule in app.url_map.iter_rules()}
    for ui_endpoint in set(UI_FOR_API.values()):
        assert ui_endpoint in endpoints, ui_endpoint
        rule = endpoints[ui_endpoint]
        if "GET" in rule.methods:
            url = rule.build({a: ids[a] for a in rule.arguments}, append_unknown=False)[1]
            assert admin_client.get(url).status_code == 200, url
