"""Obtaining a site's certificate from an ACME CA: one call, :func:`issue`.

It orders one certificate for the site's domain and aliases with a fresh key,
proves control of every name (HTTP-01 on every active node of the site's pool, or
DNS-01 through the zone's DNS provider), and returns the chain and key; storing and
deploying the result is :mod:`.renewal`'s business.  The protocol itself (the CA's
messages, the tokens on the nodes, the DNS updates) is ``app.acme``'s: this module
decides what to prove where, from the database.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import posixpath
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dns.exception
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import current_app

from app.acme import http01
from app.acme.client import VALIDATION_TIMEOUT, AcmeIssueError, AcmeSettings, Authorization
from app.acme.dns import DnsChallengeError, DnsChallengeProvider
from app.engines.base import acme_webroot
from app.extensions import db, ssh
from app.models import Node, Site, SslMode
from app.services import deployments, rendering, resolvers
from app.services.certificates.accounts import account_client, stored_account
from app.services.dns_providers import provider_for_domain
from app.services.names import names_held_by_others

logger = logging.getLogger(__name__)

CHALLENGES = ("http-01", "dns-01")
PRECHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Issued:
    chain_pem: str   # leaf first, then intermediates
    key_pem: str     # the new certificate's private key (PKCS#8 PEM)


def issue(site_id: int, settings: AcmeSettings, *, challenge: str = "http-01") -> Issued:
    """Order a certificate for the site's domain and aliases and return it; raises
    AcmeIssueError with a message a client can act on."""
    if challenge not in CHALLENGES:
        raise AcmeIssueError("invalid_request", f"unknown challenge type {challenge!r}; "
                             f"use one of {', '.join(CHALLENGES)}")
    site = db.session.get(Site, site_id)
    if site is None:
        raise AcmeIssueError("invalid_request", f"site {site_id} does not exist")
    names = [site.domain, *site.aliases]
    held = names_held_by_others(site) if challenge == "dns-01" else []
    if held:
        # DNS-01 writes with the administrator's DNS key: only for names the
        # site's owner holds.
        raise AcmeIssueError("invalid_request", f"{', '.join(held)} belong to another "
                             "client now; remove them from the site or ask an administrator")
    if challenge == "http-01":
        wildcards = [name for name in names if name.startswith("*.")]
        if wildcards:
            raise AcmeIssueError("invalid_request", f"{', '.join(wildcards)} can only be "
                                 "validated with DNS-01")
    nodes = deployments.active_nodes(site.pool_id)
    hosts: list[http01.TokenHost] = []
    providers: dict[str, DnsChallengeProvider] = {}
    if challenge == "http-01":
        if not nodes:
            raise AcmeIssueError("challenge_unreachable", "the site's pool has no active "
                                 "proxy node to serve the HTTP-01 token")
        hosts = _token_hosts(nodes)
    else:
        providers = _dns_providers(names)
    addresses = _node_addresses(nodes)
    stored = stored_account(settings.directory_url)
    servers = precheck_resolvers() if challenge == "http-01" else ()
    _release_connection()

    if servers:
        precheck(names, addresses, servers)
    elif challenge == "http-01":
        logger.info("site %s: DNS pre-check skipped: no DNS resolvers are configured", site_id)
    if settings.ca_bundle and not os.path.isfile(settings.ca_bundle):
        raise AcmeIssueError("ca_unreachable", f"the ACME CA bundle {settings.ca_bundle} "
                             "does not exist; fix the certificate settings")
    key_pem, csr_pem = _key_and_csr(names)
    client = account_client(settings, stored)
    try:
        order, authorizations = client.new_order(csr_pem, challenge)
        logger.info("site %s: ACME order %s for %d names", site_id, order.uri, len(names))
        deadline = time.monotonic() + VALIDATION_TIMEOUT
        proving = (_http01(hosts, authorizations) if challenge == "http-01"
                   else _dns01(providers, authorizations))
        with proving:
            client.answer(authorizations)
            client.wait_for_validation(authorizations, challenge, deadline)
        chain_pem = client.finalize(order, deadline)
    finally:
        client.close()
    _check_issued(chain_pem, key_pem)
    logger.info("site %s: certificate issued by %s", site_id, settings.directory_url)
    return Issued(chain_pem=chain_pem, key_pem=key_pem)


def _release_connection() -> None:
    """End the session's read-only transaction, so that no database connection is
    held while the CA works (minutes at worst); a caller's unsaved changes, if any,
    are left alone."""
    session = db.session
    if not (session.new or session.dirty or session.deleted):
        session.commit()


# -- keys, CSR, result ------------------------------------------------------------

def _key_and_csr(names: Sequence[str]) -> tuple[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    subject = ([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]
               if len(names[0]) <= 64 else [])  # a CN holds at most 64 characters
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name(subject))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _check_issued(chain_pem: str, key_pem: str) -> None:
    """The CA's answer is a chain whose leaf carries our key."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as exc:
        raise AcmeIssueError("ca_refused", f"the CA returned no usable certificate: {exc}") \
            from exc
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise AcmeIssueError("ca_refused", "the CA returned a certificate for another key")


# -- proving control --------------------------------------------------------------

def _token_hosts(nodes: Sequence[Node]) -> list[http01.TokenHost]:
    return [http01.TokenHost(node.name, deployments.ssh_target(node),
                             posixpath.join(acme_webroot(rendering.node_spec(node)),
                                            http01.CHALLENGE_PATH))
            for node in nodes]


@contextmanager
def _http01(hosts: Sequence[http01.TokenHost],
            authorizations: Sequence[Authorization]) -> Iterator[None]:
    tokens = {a.challenge.chall.encode("token"): a.validation
              for a in authorizations if a.challenge is not None}
    if not tokens:
        yield
        return
    with http01.published(ssh.pool(), hosts, tokens):
        yield


def _dns_providers(names: Sequence[str]) -> dict[str, DnsChallengeProvider]:
    """The provider of each name, found before the CA is asked for anything."""
    providers = {}
    for name in names:
        try:
            providers[name.removeprefix("*.")] = provider_for_domain(name)
        except DnsChallengeError as exc:
            raise AcmeIssueError("dns_provider", str(exc)) from exc
    return providers


@contextmanager
def _dns01(providers: dict[str, DnsChallengeProvider],
           authorizations: Sequence[Authorization]) -> Iterator[None]:
    """The TXT records of every name to prove, removed afterwards whatever happens;
    waiting until they propagate is the provider's business."""
    added: list[tuple[DnsChallengeProvider, str, str]] = []
    try:
        for authz in authorizations:
            if authz.challenge is None:
                continue
            name = authz.name.removeprefix("*.")
            fqdn = "_acme-challenge." + name
            provider = providers.get(name)
            if provider is None:
                raise AcmeIssueError("ca_refused", f"the CA asked to prove {name}, which "
                                     "the order did not name")
            try:
                provider.add_txt(fqdn, authz.validation)
            except DnsChallengeError as exc:
                raise AcmeIssueError("dns_provider", str(exc)) from exc
            added.append((provider, fqdn, authz.validation))
        yield
    finally:
        for provider, fqdn, value in added:
            try:
                provider.remove_txt(fqdn, value)
            except DnsChallengeError as exc:
                logger.warning("DNS-01 record %s left in place: %s", fqdn, exc)


# -- pre-check --------------------------------------------------------------------

def precheck_resolvers() -> tuple[resolvers.ResolverAddress, ...]:
    """The servers the pre-check asks: ``ACME_PRECHECK_RESOLVERS`` when set, else the
    DNS resolvers every DNS check uses; none (or a list that is not addresses, which
    is logged) means no pre-check."""
    explicit = current_app.config.get("ACME_PRECHECK_RESOLVERS") or ""
    try:
        return resolvers.parse_resolvers(explicit) if explicit.strip() \
            else resolvers.configured()
    except ValueError as exc:
        logger.warning("the ACME pre-check's resolvers are not a list of addresses: %s", exc)
        return ()


PRECHECK_SKIPPED = ("Skipped: no DNS resolvers are configured, so the names are not checked "
                    "to point at the pool's nodes before the CA is asked (a name pointing "
                    "elsewhere fails at the CA instead). An administrator sets resolvers in "
                    "Settings, Nameservers, or with DNS_RESOLVERS.")
PRECHECK_ON = ("Before each order the names are resolved through the configured DNS "
               "resolvers and must point at one of the pool's nodes.")


def precheck_plan(site: Site) -> dict[str, str]:
    """Whether an order of the site's certificate is pre-checked, in words: ``on``,
    ``skipped`` (no resolvers), or ``not_applicable`` (not an HTTP-01 ACME site)."""
    if site.ssl_mode != SslMode.LETSENCRYPT or site.acme_challenge != "http-01":
        return {"state": "not_applicable", "message": ""}
    if precheck_resolvers():
        return {"state": "on", "message": PRECHECK_ON}
    return {"state": "skipped", "message": PRECHECK_SKIPPED}


def _node_addresses(nodes: Sequence[Node]) -> set[str]:
    found = set()
    for node in nodes:
        for value in (node.listen_address, node.host):
            try:
                found.add(str(ipaddress.ip_address(value or "")))
            except ValueError:
                continue
    return found


def precheck(names: Sequence[str], allowed: set[str],
             servers: Sequence[resolvers.ResolverAddress]) -> None:
    """Fail early, before asking the CA, when a name does not point at any of the
    ``allowed`` addresses (the pool's nodes), resolved through ``servers``.

    :raises AcmeIssueError: ``dns_not_pointing``.
    """
    resolver = resolvers.make_resolver(servers, PRECHECK_TIMEOUT)
    for name in names:
        addresses: set[str] = set()
        for rdtype in ("A", "AAAA"):
            try:
                answer = resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                logger.warning("pre-check of %s skipped: %s", name, exc)
                return  # the resolvers failed: let the CA decide
            addresses.update(str(ipaddress.ip_address(r.to_text())) for r in answer)
        if not addresses:
            raise AcmeIssueError("dns_not_pointing", f"{name} has no A or AAAA record; point "
                                 "it at the site's proxy nodes and try again")
        if not addresses & allowed:
            raise AcmeIssueError(
                "dns_not_pointing", f"{name} resolves to {', '.join(sorted(addresses))}, "
                "which is not one of the site's proxy nodes; point it at them and try again")
