"""DNS-01 challenge providers: one small interface, a registry by kind.

A provider writes and removes the ``_acme-challenge`` TXT record of a domain in a
zone it controls.  Errors carry a message a client can act on (which zone, which
server, what it answered); secrets never appear in them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class DnsChallengeError(Exception):
    """The record could not be written or removed; the message explains why."""


class DnsChallengeProvider(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def add_txt(self, fqdn: str, value: str) -> None:
        """Add one TXT value at ``fqdn`` (others already there are kept: a domain
        and its wildcard validate with two values at the same name).

        :raises DnsChallengeError:
        """

    @abstractmethod
    def remove_txt(self, fqdn: str, value: str) -> None:
        """Remove that one value again; a value already gone is not an error.

        :raises DnsChallengeError:
        """


PROVIDERS: dict[str, type[DnsChallengeProvider]] = {}


def register(cls: type[DnsChallengeProvider]) -> type[DnsChallengeProvider]:
    PROVIDERS[cls.kind] = cls
    return cls
