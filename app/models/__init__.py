"""All models, importable from one place (Alembic needs them registered)."""

from app.models.alert import (
    Alert,
    AlertKind,
    AlertRule,
    AlertSeverity,
    AlertState,
    AlertTransition,
    Silence,
    SubjectKind,
)
from app.models.audit import AuditLog
from app.models.certificate import (
    AcmeAccount,
    AcmeChallenge,
    Certificate,
    CertificateAttempt,
    CertificateProvider,
    CertificateStatus,
    DnsProvider,
)
from app.models.deployment import (
    ConfigBlob,
    ConfigVersion,
    DeploymentStatus,
    NodeDeployment,
    NodeLease,
    Rollout,
    RolloutKind,
)
from app.models.jobs import JobRun, JobStatus, SchedulerLease
from app.models.monitoring import (
    NameserverCheck,
    NameserverStatus,
    NodeMetric,
    SiteCheck,
    ZoneNameservers,
)
from app.models.node import Node, NodeStatus, Pool, ProxyType
from app.models.notification import (
    ChannelKind,
    DeliveryStatus,
    NotificationChannel,
    NotificationDelivery,
)
from app.models.setting import Setting
from app.models.site import (
    BackendProtocol,
    BlockedName,
    DomainGrant,
    GeoMode,
    Site,
    SiteBackend,
    SiteBasicAuthUser,
    SiteHostname,
    SiteStatus,
    SslMode,
    WafLevel,
)
from app.models.user import ApiToken, RecoveryCode, Role, User, UserSession

__all__ = [
    "Alert", "AlertKind", "AlertRule", "AlertSeverity", "AlertState", "AlertTransition",
    "Silence", "SubjectKind",
    "NameserverCheck", "NameserverStatus", "NodeMetric", "SiteCheck", "ZoneNameservers",
    "AcmeAccount", "AcmeChallenge", "Certificate", "CertificateAttempt",
    "CertificateProvider", "CertificateStatus", "DnsProvider", "JobRun", "JobStatus",
    "SchedulerLease", "Setting",
    "ApiToken", "AuditLog", "BackendProtocol", "BlockedName", "ConfigBlob", "ConfigVersion",
    "NodeDeployment",
    "DomainGrant",
    "ChannelKind", "DeliveryStatus", "NotificationChannel", "NotificationDelivery",
    "DeploymentStatus", "GeoMode", "Node", "NodeLease", "NodeStatus", "Pool", "Rollout",
    "RolloutKind",
    "ProxyType", "RecoveryCode", "Role", "Site", "SiteBackend", "SiteBasicAuthUser",
    "SiteHostname", "SiteStatus", "SslMode", "User", "UserSession", "WafLevel",
]
