"""Registers every API resource module."""

from __future__ import annotations

from flask import Flask

from app.api import (
    alerts,
    audit,
    certificates,
    deployments,
    dns_providers,
    domain_grants,
    jobs,
    metrics,
    nameservers,
    nodes,
    notifications,
    pools,
    settings,
    sites,
    tokens,
    uptime,
    users,
)
from app.api.base import api
from app.extensions import csrf

BLUEPRINTS = (tokens.blp, sites.blp, deployments.blp, nodes.blp, pools.blp, users.blp,
              audit.blp, certificates.blp, jobs.blp, dns_providers.blp, settings.blp,
              domain_grants.blp, notifications.blp, nameservers.blp, uptime.blp,
              alerts.blp, alerts.rules_blp, alerts.silences_blp, metrics.blp)


def register(app: Flask) -> None:
    """Mount the resources under /api/v1 and into the OpenAPI document.  They never
    read cookies (bearer tokens only), so CSRF protection has nothing to protect."""
    for blueprint in BLUEPRINTS:
        csrf.exempt(blueprint)
        api.register_blueprint(blueprint)
