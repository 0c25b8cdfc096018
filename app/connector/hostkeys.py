"""Host keys: trust on first use, pinned in the database.

Keys are OpenSSH public key lines (``"ssh-ed25519 AAAA..."``) stored on the node row,
not in a known_hosts file: Paramiko's ``AutoAddPolicy`` rewriting one shared file from
many threads corrupts it, and several app instances would each have their own file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import struct
from collections.abc import Callable

from paramiko import PKey

from app.connector.errors import ConnectorError, HostKeyChanged

logger = logging.getLogger(__name__)

#: Called with (node id, key line) when a node without a pinned key is first reached.
FirstContactCallback = Callable[[int, str], None]

# Signature algorithms by which a server proves it holds a key of a given type, where
# they differ from the type's name (RSA keys sign with SHA-2; Paramiko dropped SHA-1).
_SIGNATURE_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


def parse_key_line(line: str) -> tuple[str, bytes]:
    """Split an OpenSSH public key line into its type and key blob.

    :raises ValueError: if the line is not ``TYPE BASE64 [COMMENT]`` with a blob that
        names the same type.
    """
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected 'TYPE BASE64'")
    key_type, encoded = parts[0], parts[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("key data is not base64") from exc
    # The blob begins with its own type name: a mismatch means a corrupted pin.
    if len(blob) < 4:
        raise ValueError("key data is truncated")
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4:4 + length] != key_type.encode():
        raise ValueError("key data does not match the key type")
    return key_type, blob


def key_line(key: PKey) -> str:
    """The OpenSSH public key line of a key a server presented."""
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint(line: str) -> str:
    """The SHA256 fingerprint of a key line, as ``ssh-keygen -l`` and ``ssh`` print it.

    :raises ValueError: if ``line`` is not a public key line.
    """
    _, blob = parse_key_line(line)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _parse_pin(node_id: int, pinned: str) -> tuple[str, bytes]:
    try:
        return parse_key_line(pinned)
    except ValueError as exc:
        # Connecting anyway would silently drop the pin: a person must fix the row.
        raise ConnectorError(f"pinned host key of node {node_id} is unreadable: {exc}") from exc


class HostKeyPolicy:
    """Trust on first use: accept and report the first key, then insist on it.

    :param on_first_contact: receives (node id, key line) when a node without a pinned
        key is reached, in the calling thread, before authentication (as OpenSSH adds
        to known_hosts); the service stores it as the node's pin. If it raises, the
        connection is abandoned.
    """

    def __init__(self, on_first_contact: FirstContactCallback | None = None) -> None:
        self._on_first_contact = on_first_contact

    def algorithms(self, node_id: int, pinned: str | None) -> tuple[str, ...] | None:
        """Host key algorithms to offer, or None for Paramiko's defaults.

        With a pin, only its type is offered: a server holding keys of several types
        would otherwise present whichever Paramiko prefers and look changed.
        """
        if pinned is None:
            return None
        key_type, _ = _parse_pin(node_id, pinned)
        return _SIGNATURE_ALGORITHMS.get(key_type, (key_type,))

    def verify(self, node_id: int, pinned: str | None, presented: str) -> None:
        """Accept ``presented`` or raise; called after the key exchange proved the server
        holds the key, before any credential is sent.

        :raises HostKeyChanged: if a pin exists and ``presented`` is another key.
        """
        if pinned is None:
            logger.info("node %s: first contact, host key %s", node_id, fingerprint(presented))
            if self._on_first_contact is not None:
                self._on_first_contact(node_id, presented)
            return
        if _parse_pin(node_id, pinned) != parse_key_line(presented):
            error = HostKeyChanged(node_id, fingerprint(pinned), fingerprint(presented),
                                   presented)
            logger.error("%s", error)
            raise error
