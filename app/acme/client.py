"""Talking to any ACME directory (RFC 8555) through the ``acme`` library.

Every request has a timeout and verifies the CA's TLS certificate, against the
system store or the private CA bundle the settings name (never switched off).
Whatever goes wrong ends as :class:`AcmeIssueError`, whose ``code`` says what kind of
problem it is (the CA refused, a rate limit, a validation that could not reach the
site, ...) and whose message a client can act on.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import josepy as jose
import requests
from acme import challenges, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger(__name__)

USER_AGENT = "rpcc-acme"
# (connect, read) seconds for every request to the CA.
NETWORK_TIMEOUT = (10.0, 30.0)
# How long the CA may take to validate and to issue, and how often it is asked.
VALIDATION_TIMEOUT = 120.0
POLL_FIRST, POLL_MAX = 0.2, 3.0

ERROR_CODES = ("dns_not_pointing", "ca_refused", "rate_limited", "challenge_unreachable",
               "dns_provider", "ca_unreachable", "invalid_request")
_PROBLEM = "urn:ietf:params:acme:error:"
# Validation problems that mean "the CA did not get the token from our nodes".
_UNREACHABLE = {"connection", "unauthorized", "incorrectResponse", "tls"}
# Details that mean the name did not resolve, or resolved to nothing usable.
_NOT_RESOLVING = ("could not resolve", "no valid a record", "no valid aaaa record",
                  "nxdomain", "no such host", "servfail", "dns problem")


class AcmeIssueError(Exception):
    """An issuance failed.

    :param code: one of :data:`ERROR_CODES`.
    :param message: what happened and what to do, for the site's owner.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown ACME error code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class AcmeSettings:
    """Which CA to order from and how to trust it: every order and account uses one."""

    directory_url: str
    email: str
    ca_bundle: str | None  # path to a PEM bundle for a private CA (verify=), None = system store


def new_account_key() -> str:
    """A P-256 account key (PKCS#8 PEM): ES256 signatures are small and fast."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _jwk(key_pem: str) -> tuple[jose.JWK, jose.JWASignature]:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jose.JWKEC(key=key), jose.ES256
    return jose.JWKRSA(key=key), jose.RS256


def problem_code(problem: messages.Error) -> str:
    """``rateLimited`` for ``urn:ietf:params:acme:error:rateLimited``."""
    return (problem.typ or "").removeprefix(_PROBLEM)


def describe_problem(problem: messages.Error) -> str:
    """The CA's own words, with its subproblems (one per name)."""
    text = problem.detail or problem.title or problem_code(problem) or "no detail given"
    parts = [text]
    for sub in problem.subproblems or ():
        name = sub.identifier.value if sub.identifier is not None else "?"
        parts.append(f"{name}: {sub.detail or problem_code(sub)}")
    return "; ".join(parts)


def refused(problem: messages.Error, what: str) -> AcmeIssueError:
    """The error for a problem document the CA answered a request with."""
    if problem_code(problem) == "rateLimited":
        return AcmeIssueError(
            "rate_limited", f"the CA's rate limit was reached while {what}: "
            f"{describe_problem(problem)}; try again later")
    return AcmeIssueError("ca_refused", f"the CA refused {what}: {describe_problem(problem)}")


def validation_failed(name: str, challenge_type: str, problem: messages.Error) -> AcmeIssueError:
    """The error for a challenge the CA could not validate."""
    code = problem_code(problem)
    detail = describe_problem(problem)
    if code == "rateLimited":
        return refused(problem, f"validating {name}")
    if code == "dns" or any(mark in detail.lower() for mark in _NOT_RESOLVING):
        if challenge_type == "dns-01":
            return AcmeIssueError(
                "dns_not_pointing", f"the CA could not look up the {challenge_type} record "
                f"for {name}: {detail}")
        return AcmeIssueError(
            "dns_not_pointing", f"{name} does not resolve to the site's proxy nodes for the "
            f"CA: {detail}. Point its A/AAAA records at the nodes and try again")
    if code in _UNREACHABLE:
        if challenge_type == "dns-01":
            return AcmeIssueError(
                "challenge_unreachable", f"the CA did not find the expected "
                f"_acme-challenge TXT record for {name}: {detail}")
        return AcmeIssueError(
            "challenge_unreachable", f"the CA could not fetch the HTTP-01 token for {name} "
            f"from the proxy nodes: {detail}. Check that {name} points at the nodes and that "
            "they answer HTTP on port 80")
    return AcmeIssueError("ca_refused", f"the CA refused {name}: {detail}")


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn the ``acme`` library's and ``requests``' exceptions into
    :class:`AcmeIssueError` while ``what`` happens."""
    try:
        yield
    except AcmeIssueError:
        raise
    except messages.Error as exc:
        raise refused(exc, what) from exc
    except requests.exceptions.SSLError as exc:
        raise AcmeIssueError(
            "ca_unreachable", f"the CA's TLS certificate could not be verified while {what} "
            f"(check the ACME CA bundle setting): {_root_cause(exc)}") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise AcmeIssueError(
            "ca_unreachable", f"the CA did not answer while {what}: {_root_cause(exc)}") from exc
    except requests.exceptions.RequestException as exc:
        raise AcmeIssueError("ca_unreachable",
                             f"request to the CA failed while {what}: {_root_cause(exc)}") from exc
    except errors.TimeoutError as exc:
        raise AcmeIssueError("ca_unreachable",
                             f"the CA did not finish {what} in time; try again later") from exc
    except errors.IssuanceError as exc:
        raise refused(exc.error, what) from exc
    except errors.ClientError as exc:
        raise AcmeIssueError("ca_refused", f"unexpected answer from the CA while {what}: "
                             f"{_client_error(exc)}") from exc
    except (errors.Error, jose.DeserializationError, ValueError, KeyError) as exc:
        raise AcmeIssueError("ca_refused",
                             f"unexpected answer from the CA while {what}: {exc}") from exc


def _root_cause(exc: BaseException) -> str:
    """The innermost reason (urllib3 wraps it two or three times)."""
    seen = exc
    while True:
        inner = seen.__cause__ or seen.__context__
        if inner is None and seen.args and isinstance(seen.args[0], BaseException):
            inner = seen.args[0]
        if inner is None or inner is seen:
            break
        seen = inner
    reason = getattr(seen, "reason", None)
    if isinstance(reason, BaseException):
        seen = reason
    return str(seen) or type(seen).__name__


def _client_error(exc: errors.ClientError) -> str:
    if isinstance(exc, errors.ConflictError):
        return f"conflict with {exc.location}"
    response = exc.args[0] if exc.args else None
    if isinstance(response, requests.Response):
        return f"HTTP {response.status_code} from {response.url}"
    return str(exc)


@dataclass(frozen=True)
class Authorization:
    """One name of an order, with the challenge picked for it."""

    name: str
    resource: messages.AuthorizationResource
    challenge: messages.ChallengeBody | None  # None: already valid, nothing to prove
    validation: str  # key authorization (HTTP-01) or TXT value (DNS-01)


class AcmeClient:
    """One CA session under one account key.

    :param directory_url: the CA's directory.
    :param ca_bundle: PEM file of the CA's TLS issuer, or None for the system store.
    :param key_pem: the account key.
    """

    def __init__(self, directory_url: str, ca_bundle: str | None, key_pem: str) -> None:
        self.directory_url = directory_url
        self.key, alg = _jwk(key_pem)
        # requests takes a CA file path or True; False is never passed.
        verify: bool = ca_bundle or True  # type: ignore[assignment]
        self.net = ClientNetwork(self.key, alg=alg, verify_ssl=verify, user_agent=USER_AGENT,
                                 timeout=NETWORK_TIMEOUT)  # type: ignore[arg-type]
        try:
            with translated(f"reading the directory {directory_url}"):
                directory = ClientV2.get_directory(directory_url, self.net)
                missing = {"newNonce", "newAccount", "newOrder"} - set(directory.to_partial_json())
                if missing:
                    raise ValueError(f"it lacks {', '.join(sorted(missing))}")
        except AcmeIssueError as exc:
            if exc.code != "ca_refused":
                raise
            # Whatever answered there is no ACME server we can use.
            raise AcmeIssueError("ca_unreachable", f"{directory_url} does not answer as an "
                                 f"ACME directory: {exc}") from exc
        self.client = ClientV2(directory, self.net)

    def close(self) -> None:
        self.net.session.close()

    # -- account ----------------------------------------------------------------

    def external_account_required(self) -> bool:
        meta = self.client.directory.meta
        return bool(meta and meta.external_account_required)

    def register(self, email: str) -> str:
        """Create the account (agreeing to the CA's terms), or find the one this key
        already has; returns its URL."""
        registration = messages.NewRegistration.from_data(email=email or None,
                                                          terms_of_service_agreed=True)
        self.net.account = None  # a new-account request is signed with the bare key
        with translated("registering the ACME account"):
            try:
                return str(self.client.new_account(registration).uri)
            except errors.ConflictError as exc:  # this key has an account already
                uri = str(exc.location)
                self.use_account(uri)
                return uri

    def use_account(self, uri: str) -> None:
        self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())

    def find_account(self) -> messages.RegistrationResource | None:
        """This key's account at the CA, or None if it has none (a CA that was reset,
        an account deactivated)."""
        known = messages.RegistrationResource(uri="", body=messages.Registration())
        with translated("looking up the ACME account"):
            try:
                return self.client.query_registration(known)
            except messages.Error as exc:
                if problem_code(exc) in ("accountDoesNotExist", "unauthorized"):
                    self.net.account = None
                    return None
                raise

    def update_contact(self, account: messages.RegistrationResource, email: str) -> None:
        update = messages.Registration.from_data(email=email or None)
        if not email:
            update = update.update(contact=())
        with translated("updating the ACME account's contact"):
            self.client.update_registration(account, update)

    # -- orders -----------------------------------------------------------------

    def new_order(self, csr_pem: bytes, challenge_type: str) -> tuple[messages.OrderResource,
                                                                    list[Authorization]]:
        """Create the order; for each name still to prove, the challenge of
        ``challenge_type`` and what to publish for it."""
        with translated("creating the order"):
            order = self.client.new_order(csr_pem)
        wanted = challenges.HTTP01 if challenge_type == "http-01" else challenges.DNS01
        result = []
        for authz in order.authorizations:
            name = authz.body.identifier.value
            if authz.body.status == messages.STATUS_VALID:
                result.append(Authorization(name, authz, None, ""))
                continue
            found = [c for c in authz.body.challenges if isinstance(c.chall, wanted)]
            if not found:
                offered = ", ".join(sorted({c.chall.typ for c in authz.body.challenges}))
                raise AcmeIssueError(
                    "ca_refused", f"the CA offers no {challenge_type} challenge for {name} "
                    f"(it offers: {offered or 'none'})")
            challenge = found[0]
            result.append(Authorization(name, authz, challenge,
                                        challenge.chall.validation(self.key)))
        return order, result

    def answer(self, authorizations: list[Authorization]) -> None:
        """Tell the CA the challenges are ready to be checked."""
        for authz in authorizations:
            if authz.challenge is not None:
                with translated(f"starting the validation of {authz.name}"):
                    self.client.answer_challenge(authz.challenge,
                                                 authz.challenge.chall.response(self.key))

    def wait_for_validation(self, authorizations: list[Authorization],
                            challenge_type: str, deadline: float) -> None:
        """Poll until the CA has decided on every name.

        :raises AcmeIssueError: for the first name it refused, with its reason.
        """
        for authz in authorizations:
            if authz.challenge is None:
                continue
            resource = authz.resource
            delay = POLL_FIRST
            while True:
                with translated(f"validating {authz.name}"):
                    resource, _ = self.client.poll(resource)
                status = resource.body.status
                if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                    break
                if time.monotonic() + delay > deadline:
                    raise AcmeIssueError(
                        "ca_unreachable", f"the CA did not finish validating {authz.name} "
                        f"within {VALIDATION_TIMEOUT:.0f} s; try again later")
                time.sleep(delay)
                delay = min(POLL_MAX, delay * 2)
            if status == messages.STATUS_VALID:
                continue
            problems = [c.error for c in resource.body.challenges if c.error is not None]
            if problems:
                raise validation_failed(authz.name, challenge_type, problems[0])
            raise AcmeIssueError("ca_refused", f"the CA set the authorization for "
                                 f"{authz.name} to {status} without giving a reason")

    def finalize(self, order: messages.OrderResource, deadline: float) -> str:
        """Send the CSR and fetch the certificate; returns the full chain PEM."""
        remaining = max(1.0, deadline - time.monotonic())
        until = datetime.datetime.now() + datetime.timedelta(seconds=remaining)
        with translated("issuing the certificate"):
            done = self.client.finalize_order(order, until)
        return str(done.fullchain_pem)
