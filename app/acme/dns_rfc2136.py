"""DNS-01 records written by RFC 2136 dynamic update, signed with a TSIG key.

Works with any authoritative server that accepts signed updates (BIND, Knot,
PowerDNS, Windows DNS).  Updates go over TCP, so a large signed message never
depends on UDP fragments.  After an update the same server is asked for the record
until it answers with the new value: the ACME server must not validate before the
record can be seen.
"""

from __future__ import annotations

import binascii
import logging
import socket
import time

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
from dns.rdtypes.ANY.TXT import TXT

from app.acme.dns import DnsChallengeError, DnsChallengeProvider, register

log = logging.getLogger(__name__)

# TSIG algorithms accepted by every current server; older HMAC-MD5/SHA1 are refused.
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
RECORD_TTL = 60
_HINTS = {
    dns.rcode.NOTAUTH: "check the TSIG key name, algorithm and secret, and that the "
                       "server is authoritative for the zone",
    dns.rcode.REFUSED: "check that the server's update policy allows this key to "
                       "change TXT records under the zone",
    dns.rcode.NOTZONE: "the record name is outside the zone configured on the server",
    dns.rcode.SERVFAIL: "the server failed to apply the update; see its log",
}


@register
class Rfc2136Provider(DnsChallengeProvider):
    """One zone on one authoritative server, changed with one TSIG key."""

    kind = "rfc2136"

    def __init__(
        self,
        *,
        zone: str,
        server: str,
        port: int = 53,
        tsig_name: str,
        tsig_algorithm: str = "hmac-sha256",
        tsig_secret: str,
        timeout: float = 5.0,
        propagation_timeout: float = 30.0,
    ) -> None:
        if tsig_algorithm not in TSIG_ALGORITHMS:
            raise DnsChallengeError(
                f"TSIG algorithm {tsig_algorithm!r} is not supported "
                f"(use one of {', '.join(TSIG_ALGORITHMS)})")
        self.zone = dns.name.from_text(zone)
        self.server = server
        self.port = port
        self.timeout = timeout
        self.propagation_timeout = propagation_timeout
        self._secret = tsig_secret
        try:
            self._keyring = dns.tsigkeyring.from_text(
                {tsig_name: (tsig_algorithm, tsig_secret)})
        except (binascii.Error, ValueError, dns.exception.DNSException):
            raise DnsChallengeError(
                f"the TSIG key for zone {self._zone_text} is unusable: its name must be a "
                "DNS name and its secret base64") from None
        self._keyname = dns.name.from_text(tsig_name)

    @property
    def _zone_text(self) -> str:
        return self.zone.to_text(omit_final_dot=True)

    @property
    def _where(self) -> str:
        host = f"[{self.server}]" if ":" in self.server else self.server
        return f"{host}:{self.port}"

    def add_txt(self, fqdn: str, value: str) -> None:
        name = self._name_in_zone(fqdn)
        update = self._update()
        update.add(name, RECORD_TTL, _txt(value))
        self._send(update, "add", name)
        self._wait_visible(name, value)

    def remove_txt(self, fqdn: str, value: str) -> None:
        name = self._name_in_zone(fqdn)
        update = self._update()
        # Deleting one RR that does not exist is a no-op for the server (RFC 2136 3.4.2.4).
        update.delete(name, _txt(value))
        self._send(update, "remove", name)

    # ------------------------------------------------------------------ internals

    def _name_in_zone(self, fqdn: str) -> dns.name.Name:
        try:
            name = dns.name.from_text(fqdn)
        except dns.exception.DNSException:
            raise DnsChallengeError(f"{fqdn[:80]!r} is not a DNS name") from None
        if not name.is_subdomain(self.zone):
            raise DnsChallengeError(
                f"{name.to_text(omit_final_dot=True)} is not inside zone {self._zone_text}")
        return name

    def _update(self) -> dns.update.Update:
        return dns.update.Update(self.zone, keyring=self._keyring, keyname=self._keyname)

    def _address(self) -> str:
        """The server as an IP literal (dnspython sends to addresses only)."""
        try:
            infos = socket.getaddrinfo(self.server, self.port, type=socket.SOCK_STREAM)
        except OSError:
            raise DnsChallengeError(
                f"the DNS server name {self.server} cannot be resolved") from None
        return str(infos[0][4][0])

    def _send(self, update: dns.update.Update, action: str, name: dns.name.Name) -> None:
        record = name.to_text(omit_final_dot=True)
        try:
            response = dns.query.tcp(update, self._address(), timeout=self.timeout,
                                     port=self.port)
        except dns.tsig.PeerError as exc:
            # The server answered with a TSIG error: the key is wrong or unknown.
            raise self._error(
                f"the DNS server refused the update for zone {self._zone_text}: "
                f"{_tsig_error_name(exc)} (check the TSIG key name, algorithm and secret)"
            ) from None
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.message.UnknownTSIGKey):
            raise self._error(
                f"the answer from {self._where} for zone {self._zone_text} is not signed with "
                "the configured TSIG key (check the key on the server)") from None
        except dns.exception.FormError as exc:
            if "TSIG" not in str(exc):
                raise self._error(
                    f"{self._where} sent a malformed answer to the update for zone "
                    f"{self._zone_text}") from None
            # A server that does not serve the zone refuses without signing (RFC 8945).
            raise self._error(
                f"the DNS server refused the update for zone {self._zone_text} with an "
                f"unsigned answer: {self._where} is probably not authoritative for "
                f"{self._zone_text} (check the zone name and the server)") from None
        except dns.exception.Timeout:
            raise self._error(
                f"no answer from {self._where} within {self.timeout:g} s") from None
        except ConnectionRefusedError:
            raise self._error(
                f"{self._where} refused the connection: is an authoritative DNS server "
                "listening there on TCP?") from None
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            raise self._error(
                f"the update for zone {self._zone_text} at {self._where} failed: "
                f"{type(exc).__name__} {exc}".rstrip()) from None
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = _HINTS.get(rcode, "see the DNS server's log")
            raise self._error(
                f"the DNS server refused the update for zone {self._zone_text}: "
                f"{dns.rcode.to_text(rcode)} ({hint})")
        log.info("dns-01 %s of TXT %s at %s", action, record, self._where)

    def _wait_visible(self, name: dns.name.Name, value: str) -> None:
        """Poll the same server until the value is served, with growing pauses."""
        deadline = time.monotonic() + self.propagation_timeout
        pause = 0.05
        expected = value.encode()
        while True:
            if expected in self._served_values(name):
                return
            if time.monotonic() + pause > deadline:
                raise DnsChallengeError(
                    f"{self._where} accepted the update but did not serve the TXT record "
                    f"{name.to_text(omit_final_dot=True)} within {self.propagation_timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _served_values(self, name: dns.name.Name) -> set[bytes]:
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        try:
            response = dns.query.tcp(query, self._address(), timeout=self.timeout,
                                     port=self.port)
        except (OSError, EOFError, dns.exception.DNSException):
            return set()
        values: set[bytes] = set()
        for rrset in response.answer:
            if rrset.name == name and rrset.rdtype == dns.rdatatype.TXT:
                for rdata in rrset:
                    values.add(b"".join(rdata.strings))
        return values

    def _error(self, message: str) -> DnsChallengeError:
        # Belt and braces: no message may carry the key material.
        return DnsChallengeError(message.replace(self._secret, "***"))


def _txt(value: str) -> TXT:
    """The ACME value (base64url, 43 characters) as one TXT string; no quoting is
    involved, so no value can break out of the record."""
    if not value or len(value) > 255 or not value.isascii() or not value.isprintable():
        raise DnsChallengeError("a TXT value must be 1 to 255 printable ASCII characters")
    return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode()])


def _tsig_error_name(exc: dns.tsig.PeerError) -> str:
    names = {
        dns.tsig.PeerBadKey: "NOTAUTH/BADKEY",
        dns.tsig.PeerBadSignature: "NOTAUTH/BADSIG",
        dns.tsig.PeerBadTime: "NOTAUTH/BADTIME",
        dns.tsig.PeerBadTruncation: "NOTAUTH/BADTRUNC",
    }
    return names.get(type(exc), "NOTAUTH")
