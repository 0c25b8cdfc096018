"""All models, importable from one place (Alembic needs them registered)."""

from app.models.audit import AuditLog
from app.models.deployment import (
    ConfigVersion,
    Deployment,
    DeploymentStatus,
    NodeLock,
    Rollout,
    RolloutKind,
)
from app.models.node import Node, NodeStatus, Pool, ProxyType
from app.models.site import (
    BackendProtocol,
    GeoMode,
    Site,
    SiteBackend,
    SiteBasicAuthUser,
    SiteHostname,
    SiteStatus,
    SslMode,
    WafLevel,
)
from app.models.user import ApiToken, Role, User

__all__ = [
    "ApiToken", "AuditLog", "BackendProtocol", "ConfigVersion", "Deployment",
    "DeploymentStatus", "GeoMode", "Node", "NodeLock", "NodeStatus", "Pool", "Rollout",
    "RolloutKind",
    "ProxyType", "Role", "Site", "SiteBackend", "SiteBasicAuthUser", "SiteHostname",
    "SiteStatus", "SslMode", "User", "WafLevel",
]
