"""Typed errors of the SSH connector.

Services tell the admin different things for each: an unreachable node may come back
by itself, bad credentials or a changed host key need a person, a timeout may mean a
hung proxy. Messages carry node ids and fingerprints, never keys or passwords.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error the connector raises."""


class UnreachableError(ConnectorError):
    """The node could not be reached, or the connection was lost, after the bounded
    retries for transient network errors."""


class AuthenticationFailed(ConnectorError):
    """The node refused the credentials (or the private key is unusable); never retried,
    since repeating a wrong key only gets the control plane's address banned."""


class HostKeyChanged(ConnectorError):
    """The node presented a host key other than the pinned one; nothing was sent.

    :param node_id: the node whose key changed.
    :param expected: SHA256 fingerprint of the pinned key.
    :param presented: SHA256 fingerprint of the key the server presented.
    :param presented_key: the presented public key line, for an admin to accept
        after checking it (public, so it may be stored and shown).
    """

    def __init__(self, node_id: int, expected: str, presented: str,
                 presented_key: str | None = None) -> None:
        super().__init__(node_id, expected, presented, presented_key)
        self.node_id = node_id
        self.expected = expected
        self.presented = presented
        self.presented_key = presented_key

    def __str__(self) -> str:
        return (f"host key of node {self.node_id} changed: pinned {self.expected}, "
                f"presented {self.presented}; refusing to connect")


class PortClosed(ConnectorError):
    """The node refused a forwarded channel: nothing listens on that address and port
    on the node, or its sshd does not allow forwarding."""


class CommandTimeout(ConnectorError):
    """A command or file operation did not finish within its timeout."""


class CommandFailed(ConnectorError):
    """A helper's remote command exited non-zero (``run`` itself returns the status).

    :param exit_status: the command's exit status.
    :param stderr: what the command printed on standard error.
    """

    def __init__(self, message: str, exit_status: int, stderr: str) -> None:
        super().__init__(message, exit_status, stderr)
        self.exit_status = exit_status
        self.stderr = stderr

    def __str__(self) -> str:
        return f"{self.args[0]} (exit {self.exit_status}): {self.stderr.strip()[:500]}"


class RemoteFileError(ConnectorError):
    """An SFTP operation failed on the node (missing file, permission denied, ...).

    :param errno: the ``errno`` the server reported, e.g. ``errno.ENOENT``, or None.
    """

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message, errno)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0])
