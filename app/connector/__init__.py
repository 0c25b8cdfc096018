"""The one door to the nodes over SSH (only this package imports Paramiko)."""

from app.connector.errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    ConnectorError,
    HostKeyChanged,
    PortClosed,
    RemoteFileError,
    UnreachableError,
)
from app.connector.pool import CommandResult, SSHConnectionPool, SSHTarget, check_tree_path

__all__ = [
    "AuthenticationFailed",
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "ConnectorError",
    "HostKeyChanged",
    "PortClosed",
    "RemoteFileError",
    "SSHConnectionPool",
    "SSHTarget",
    "UnreachableError",
    "check_tree_path",
]
